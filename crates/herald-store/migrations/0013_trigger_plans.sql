-- Herald's connections plan every statement with its parameters (plan_cache_mode =
-- force_custom_plan, see Store::connect): a generic plan kept from when `deliveries` was empty
-- scanned the whole table for each batch. The report triggers run with every write and read the
-- statement's transition tables (and the small campaigns table), so their plans do not go stale
-- as `deliveries` grows: they keep PostgreSQL's cached plans. In the end-to-end benchmark,
-- replanning them on every write had cost 0.41 rather than 0.36 ms of database CPU per message
-- at 2,000 executions/s, and 1.93 rather than 1.61 ms at 500/s (smaller batches).
ALTER FUNCTION herald_report_deliveries() SET plan_cache_mode = auto;
ALTER FUNCTION herald_report_executions() SET plan_cache_mode = auto;
ALTER FUNCTION herald_report_dead_letters() SET plan_cache_mode = auto;
