"""Monitoring: alert rules over the run log (and the warehouse), delivery, and an HTML report."""
