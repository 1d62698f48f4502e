"""HQ's storage: the database behind one interface, one module per engine."""
