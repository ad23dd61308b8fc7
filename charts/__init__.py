"""Deployment and monitoring: the Helm charts (data) and the code that generates what ships
in them (``charts.dashboards``)."""
