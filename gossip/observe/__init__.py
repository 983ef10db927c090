"""Looking at a swarm: structured logs, telemetry, the swarm view and the dashboard."""
