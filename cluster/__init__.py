"""Operating a cluster from outside: the CLI, Ray bring-up, rendering, batch jobs, planning."""
