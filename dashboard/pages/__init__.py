"""One module per page; each has ``view()`` building the page for the current session."""
