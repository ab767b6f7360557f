-- Each job's share of its batch's device time, for per-member GPU-time budgets and /stats.
ALTER TABLE invocations ADD COLUMN gpu_ms REAL;
