"""Roles, terms and reprotection: one node daemon per host that moves primary <-> standby."""
