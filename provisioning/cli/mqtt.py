"""``fieldpass-hq bridge|push|broker-config``: HQ's side of the MQTT channel (the
logic is in provisioning/mqtt/).

paho is imported when one of these commands runs, never when ``fieldpass-hq`` starts.
"""

import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import click

from agent.daemon import topics

from ..mqtt import credentials
from ..units import parse_duration
from . import common, output

broker_option = click.option(
    "--broker",
    "broker_url",
    required=True,
    metavar="URL",
    help="mqtt://HOST[:PORT] or mqtts://HOST[:PORT].",
)
password_file_option = click.option(
    "--password-file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="HQ's broker password [default: derived from HOME/mqtt.secret].",
)
ca_file_option = click.option(
    "--ca-file", type=click.Path(exists=True, dir_okay=False), help="CA for mqtts://."
)
prefix_option = click.option(
    "--topic-prefix", default=topics.DEFAULT_PREFIX, show_default=True, help="Topic prefix."
)


def _password(home: Path, password_file: str | None, username: str) -> str:
    if password_file is not None:
        return Path(password_file).read_text(encoding="utf-8").strip()
    return credentials.password(credentials.secret(home), username)


@click.command()
@broker_option
@click.option(
    "--replica",
    type=click.IntRange(1, credentials.MAX_BRIDGES),
    default=1,
    show_default=True,
    help="Which bridge replica this is: its broker user and client id are "
    "fieldpass-hq-bridge-N (broker-config --bridges makes them).",
)
@click.option("--username", default=None, help="Broker user [default: fieldpass-hq-bridge-N].")
@password_file_option
@ca_file_option
@prefix_option
@click.option(
    "--min-interval",
    default="60s",
    show_default=True,
    help="Fewest seconds between two files for one device.",
)
@common.json_option
@click.pass_context
def bridge(
    ctx: click.Context,
    broker_url: str,
    replica: int,
    username: str | None,
    password_file: str | None,
    ca_file: str | None,
    topic_prefix: str,
    min_interval: str,
    as_json: bool,
) -> None:
    """Answer the devices over MQTT, and tell them what HQ decided, until SIGTERM.

    A fresh machine file while the license is active (and the device's file is due),
    at most one per device per --min-interval whichever replica answers; a signed
    revocation when it is revoked or suspended; every answer is audited. What a
    suspension, revocation, reinstatement or deactivation means for each device (the
    outbox) is published, retained, until the device's status confirms it. Several
    replicas (--replica 1, 2, ...) share the load through a shared subscription.
    "bridge connected to URL" goes to stderr once the broker has accepted HQ; a broker
    that cannot be reached or refuses HQ exits 69. With --json, a summary of what was
    ignored and told is printed when it stops.

    Examples:

    \b
      fieldpass-hq bridge --broker mqtt://127.0.0.1:1883
      fieldpass-hq bridge --broker mqtts://broker.example:8883 --ca-file ca.pem
      fieldpass-hq bridge --broker mqtts://broker.example:8883 --replica 2
    """
    from ..mqtt import bridge as bridge_mod
    from ..mqtt import connection
    from ..mqtt.link import Link

    connection.parse_url(broker_url)  # a wrong URL is a usage error before anything else
    try:
        interval_s = parse_duration(min_interval, allow_zero=True)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--min-interval") from e
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(name)s: %(message)s")
    state = common.state(ctx)
    state.hq.require_license_keys()
    user = username or credentials.bridge_user(replica)
    password = _password(state.home, password_file, user)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def connect(
        on_message: connection.MessageHandler,
        subscriptions: list[str],
        on_connected: Callable[[], None],
    ) -> Link:
        # A clean session: a replica that is gone must leave none behind, or the broker
        # would keep handing it its share of the requests (devices ask again, and the
        # outbox is published again, so nothing waits in a session).
        client = connection.open_link(
            broker_url,
            user,
            user,
            password,
            ca_file=ca_file,
            on_message=on_message,
            subscriptions=subscriptions,
            on_connected=on_connected,
        )
        # Only now: the broker has accepted HQ's credentials (CONNACK).
        click.echo(f"fieldpass-hq: bridge connected to {broker_url}", err=True)
        return client

    worker = bridge_mod.Bridge(state.hq, topic_prefix, interval_s)
    bridge_mod.serve(worker, connect, stop)
    ignored = worker.counts or "none"
    told = worker.told or "none"
    click.echo(f"fieldpass-hq: bridge stopped; ignored: {ignored}; told: {told}", err=True)
    if as_json:
        output.emit_json(
            {
                "broker": broker_url,
                "stopped": True,
                "ignored": dict(worker.counts),
                "told": dict(worker.told),
                "heard": dict(worker.heard),
            }
        )


@click.command()
@broker_option
@click.option("--license", "license_id", help="Every live device of this license.")
@click.option("--plan", help="Every live device of this plan's licenses.")
@click.option(
    "--device",
    "devices",
    multiple=True,
    metavar="ACTIVATION|FINGERPRINT",
    help="This device (repeatable).",
)
@click.option("--expiring-within", metavar="DURATION", help="Devices whose file expires within.")
@click.option("--ttl", metavar="DURATION", help="Offline TTL of the new files [default: plan's].")
@click.option(
    "--wait", "wait_for", default="30s", show_default=True, help="Wait this long for confirmations."
)
@click.option("--username", default=credentials.PUSH_USER, show_default=True)
@password_file_option
@ca_file_option
@prefix_option
@common.json_option
@click.pass_context
def push(
    ctx: click.Context,
    broker_url: str,
    license_id: str | None,
    plan: str | None,
    devices: tuple[str, ...],
    expiring_within: str | None,
    ttl: str | None,
    wait_for: str,
    username: str,
    password_file: str | None,
    ca_file: str | None,
    topic_prefix: str,
    as_json: bool,
) -> None:
    """Renew a chosen set of devices over MQTT; print sent, confirmed, failed.

    Each device gets a fresh file, retained on its topic (an offline device gets it
    when it reconnects); a device HQ must still tell of a suspension, revocation,
    reinstatement or deactivation gets that instead (counted as revocations,
    deactivations, or files). A device confirms with its next status. Exit 0 when
    nothing failed, 1 otherwise.

    Examples:

    \b
      fieldpass-hq push --broker mqtt://127.0.0.1:1883 --license lic_0123...
      fieldpass-hq push --broker mqtt://127.0.0.1:1883 --expiring-within 30d
      fieldpass-hq push --broker mqtt://127.0.0.1:1883 --device act_1a2b... --json
    """
    from ..mqtt import connection
    from ..mqtt import push as push_mod

    if not (license_id or plan or devices or expiring_within):
        raise click.UsageError("choose devices: --license, --plan, --device or --expiring-within")
    try:
        within_s = parse_duration(expiring_within) if expiring_within else None
        ttl_s = parse_duration(ttl) if ttl else None
        wait_s = parse_duration(wait_for, allow_zero=True)
    except ValueError as e:
        raise click.BadParameter(str(e)) from e
    state = common.state(ctx)
    state.hq.require_license_keys()
    confirmations = push_mod.Confirmations(state.hq)
    link = connection.open_link(
        broker_url,
        username,
        username,
        _password(state.home, password_file, username),
        ca_file=ca_file,
        on_message=confirmations.on_message,
        subscriptions=[topics.topic(topic_prefix, "+", topics.STATUS)],
    )
    sel = push_mod.Selection(license_id, plan, devices, within_s)
    now = common.now()
    try:
        chosen = push_mod.select(state.hq, sel, now)
        with click.progressbar(length=len(chosen), label="renewing", file=sys.stderr) as bar:
            summary = push_mod.push(
                state.hq,
                link,
                confirmations,
                sel,
                prefix=topic_prefix,
                ttl_s=ttl_s,
                wait_s=wait_s,
                now=now,
                actor=common.actor(),
                progress=bar.update,
                chosen=chosen,
            )
    finally:
        link.close()
    if as_json:
        output.emit_json(summary.doc())
    else:
        told = summary.doc()
        output.emit_text(
            f"selected {summary.selected}, sent {summary.sent}, confirmed {summary.confirmed}, "
            f"failed {summary.failed}, pending {summary.pending}; revocations sent "
            f"{told['revocations_sent']}, confirmed {told['revocations_confirmed']}; "
            f"deactivations sent {told['deactivations_sent']}, confirmed "
            f"{told['deactivations_confirmed']}"
            + (f"; given back (no file) {summary.returned}" if summary.returned else "")
        )
        for failure in summary.failures[:20]:
            click.echo(f"  failed: {failure}", err=True)
    if summary.failed:
        ctx.exit(1)


@click.command("broker-config")
@click.option(
    "-o",
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory for passwd, acl and credentials.csv.",
)
@prefix_option
@click.option(
    "--bridges",
    type=click.IntRange(1, credentials.MAX_BRIDGES),
    default=2,
    show_default=True,
    help="How many bridge replicas get a broker user (fieldpass-hq-bridge-1..N).",
)
@common.json_option
@click.pass_context
def broker_config(
    ctx: click.Context, out: Path, topic_prefix: str, bridges: int, as_json: bool
) -> None:
    """Write mosquitto's password, ACL and settings for every live device and HQ.

    Each device logs in as its device id and may read only its own machine-file and
    revocation topics and write only its own renew-request and status. Every HQ process
    has its own user: fieldpass-hq-bridge-1..N, fieldpass-hq-push, fieldpass-hq-field.
    OUT/mosquitto.conf holds the broker's settings, among them use_username_as_clientid
    (the client id is the user name: nobody's credentials take over another's
    connection). The plain device passwords, for the factory, go to
    OUT/credentials.csv (mode 0600).

    Examples:

    \b
      fieldpass-hq broker-config -o /etc/mosquitto/fieldpass
      fieldpass-hq broker-config -o /etc/mosquitto/fieldpass --bridges 3
      # mosquitto.conf: the lines of /etc/mosquitto/fieldpass/mosquitto.conf,
      #                 use_username_as_clientid under every listener
    """
    from ..mqtt import brokerconf

    state = common.state(ctx)
    doc = brokerconf.write(
        out,
        credentials.secret(state.home),
        state.hq.list_activations(),
        topic_prefix,
        bridges,
    )
    if as_json:
        output.emit_json(doc)
    else:
        output.emit_text(
            f"wrote {doc['password_file']} and {doc['acl_file']} for {doc['devices']} devices "
            f"and {len(doc['hq_users'])} HQ users; broker settings in {doc['mosquitto_conf']}; "  # type: ignore[arg-type]
            f"device credentials in {doc['credentials']}"
        )
