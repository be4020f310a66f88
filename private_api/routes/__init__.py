"""HTTP routes of the private API, one module per resource."""
