"""What an operator watches: Prometheus metrics, HTTP health, OpenTelemetry traces."""
