"""HQ's licensing rules, by what they manage."""

from .issuing import HQ, Issued, Validation, check_name, license_status

__all__ = ["HQ", "Issued", "Validation", "check_name", "license_status"]
