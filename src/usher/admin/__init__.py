"""The control side's HTTP face: the admin API (`api`) and the dashboard page (`dashboard/`)."""
