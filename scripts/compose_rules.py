"""Rules docker-compose.yml must keep, checked on `docker-compose config` output (stdin)."""
import sys

import yaml

HEALTHY = "service_healthy"
COMPLETED = "service_completed_successfully"


def volume_targets(service):
    targets = []
    for volume in service.get("volumes", []):
        targets.append(volume.split(":")[1] if isinstance(volume, str) else volume.get("target", ""))
    return targets


def host_address(port):
    """The host address a published port binds, or None for all interfaces."""
    if isinstance(port, dict):
        return port.get("host_ip")
    parts = str(port).rsplit(":", 2)
    return parts[0].strip("[]") if len(parts) == 3 else None


def ports_on_all_interfaces(services):
    """Published ports without a loopback host address: Compose binds them on 0.0.0.0, which
    exposes an unauthenticated dashboard, Kafka and Cassandra, and Postgres with its
    default password, to the whole network."""
    problems = []
    for name, service in services.items():
        for port in service.get("ports", []):
            if host_address(port) != "127.0.0.1":
                shown = port if isinstance(port, str) else port.get("published", port.get("target"))
                problems.append(f"{name} publishes {shown} on every host interface (write it as \"127.0.0.1:HOST:CONTAINER\")")
    return problems


def problems_of(config):
    services = config["services"]
    problems = []
    for name in ("postgres", "kafka", "cassandra", "schema-registry"):
        if "healthcheck" not in services.get(name, {}):
            problems.append(f"{name} has no healthcheck")
    if "wal_level=logical" not in " ".join(services["postgres"].get("command", [])):
        problems.append("postgres does not run with wal_level=logical")
    for name, service in services.items():
        depends = service.get("depends_on", {})
        if isinstance(depends, list):
            problems.append(f"{name}: depends_on without conditions")
            continue
        for target, rule in depends.items():
            condition = rule.get("condition")
            if condition not in (HEALTHY, COMPLETED):
                problems.append(f"{name} -> {target}: condition is {condition}")
            elif condition == HEALTHY and "healthcheck" not in services[target]:
                problems.append(f"{name} waits for {target} to be healthy, but it has no healthcheck")
    for needed in ("walflow-migrate", "walflow-cdc", "walflow-process", "airflow", "kafka-ui"):
        if needed not in services:
            problems.append(f"no {needed} service")
    for name in ("walflow-cdc", "walflow-process"):
        if services.get(name, {}).get("profiles"):
            problems.append(f"{name} sits behind a profile: a plain `docker compose up` would not run it")
    if "/var/lib/walflow" not in volume_targets(services.get("walflow-process", {})):
        problems.append("walflow-process keeps its checkpoints outside a volume: a new container would start over")
    if "/opt/airflow/dags" not in volume_targets(services.get("airflow", {})):
        problems.append("airflow does not mount airflow/dags")
    problems.extend(ports_on_all_interfaces(services))
    return problems, len(services)


if __name__ == "__main__":
    problems, count = problems_of(yaml.safe_load(sys.stdin))
    if problems:
        print("check-compose: " + "; ".join(problems), file=sys.stderr)
        sys.exit(1)
    print(f"check-compose: {count} services, health-ordered start, logical WAL, DAGs mounted, ports on 127.0.0.1")
