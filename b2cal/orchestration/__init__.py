"""b2cal's side of Prefect: reaching the API, starting and cancelling deployment runs, and the
local stack (``b2cal server up|status|down``). The flows themselves live in ``flows/``."""
