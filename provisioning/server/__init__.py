"""The HQ HTTP API (FastAPI, served by uvicorn) over the same database as the CLI.

- ``app``: builds the app from the modules below (``create_app``);
- ``runner``: serves it (``run``): the listening socket and the TLS files checked
  before uvicorn starts, uvicorn configured with the bounds;
- ``limits``: the bounds on clients (time and size of a request's head and body, idle
  connections, connections at once) and their defaults;
- ``protocol``: the connection (uvicorn's httptools protocol) with the head's bounds;
- ``middleware``: the body's bounds and media type;
- ``device``: the device endpoints;
- ``admin``: the admin endpoints (bearer token);
- ``reports``: the devices' usage reports and return receipts;
- ``health``: ``/readyz`` for a load balancer (database reachable, schema current);
- ``fleet``: the fleet's read API (activations and licenses filtered and paged, the
  overview, sites, the audit log) and plan and seat changes (bearer token);
- ``console``: the web console under ``/console/`` (server-rendered pages, sessions);
- ``docs``: the API's interactive documentation, with every asset from the package;
- ``headers``: the Content-Security-Policy and the other headers of browser pages;
- ``errors``: every error as ``{"error": {"code", "message"}}`` with the stable code and
  status of ``provisioning.errors``;
- ``api_models``: the request bodies and error documents;
- ``common``: the clock (read in the routes, nowhere below) and the client's address.

This package's own module imports nothing, so that ``fieldpass-hq`` reads ``limits``
without loading FastAPI. Nothing in this package logs a request body.
"""
