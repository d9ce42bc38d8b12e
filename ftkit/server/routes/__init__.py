"""One router per resource: data sets, jobs, health, and the dashboard page."""
