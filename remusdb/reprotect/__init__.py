"""Reprotection: bring a returned host back as the standby without stopping the database."""
