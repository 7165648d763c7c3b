#!/usr/bin/env bash
# make stack: the whole pipeline on one machine, in the foreground.
#   agent      :2112  (Prometheus text) ──OTLP gRPC──► Collector :4317/:4318 → Prometheus exporter :8889
#   Prometheus :9090  scrapes the agent (:2112) and the Collector (:8889)
# Ctrl-C stops all three.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d /tmp/otel-netlat-stack.XXXXXX)"
pids=()
cleanup() {
    trap - INT TERM EXIT
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup INT TERM EXIT

cat > "$work/prometheus.yml" <<YAML
global: {scrape_interval: 5s, evaluation_interval: 5s}
scrape_configs:
  - job_name: otel-netlat
    static_configs: [{targets: ['127.0.0.1:2112']}]
  - job_name: otel-collector
    static_configs: [{targets: ['127.0.0.1:8889']}]
YAML

"$here/build/otelcol-netlat/otelcol-netlat" --config "$here/collector/config.yaml" > "$work/collector.log" 2>&1 &
pids+=($!)
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
    --web.listen-address=127.0.0.1:9090 > "$work/prometheus.log" 2>&1 &
pids+=($!)
echo "stack: Collector :4317/:4318 → :8889, Prometheus http://127.0.0.1:9090, agent http://127.0.0.1:2112/metrics"
echo "stack: logs in $work; Ctrl-C stops all three"
"$here/.venv/bin/otel-netlat" run --otlp-endpoint http://127.0.0.1:4317 "$@" &
pids+=($!)
wait -n "${pids[@]}" || true
