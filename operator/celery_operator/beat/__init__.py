"""The operator's beat: the schedule of a TaskQueue's PeriodicJobs, and the program that sends it.

- `schedule` (pure): when a job is due. Slots are instants: multiples of the interval since the
  Unix epoch, or cron matches in the job's time zone (croniter + zoneinfo).
- `jobs` (pure): the job definitions the operator writes to Redis, how they are diffed and read
  back, and the deterministic task id of each run.
- `runner` (I/O, the beat pod only): claim each due slot atomically in Redis, send the task, keep a
  leader lease and a heartbeat. `python -m celery_operator.beat` runs it.

`schedule` and `jobs` are pure: the operator's reconcilers use them too.
"""
