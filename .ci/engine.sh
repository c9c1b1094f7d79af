# shellcheck shell=bash
# Sourced by .ci/run: a Docker engine of CI's own, with an empty data root, so that CI meets what a
# newcomer meets (no image, no build cache, no tag from any earlier run) even on a machine whose
# usual engine keeps every image it ever built. Exports DOCKER_HOST; stopped and removed on exit.
#
# A second daemon beside the machine's engine needs a bridge of its own: one started with
# `--bridge none` deletes the shared docker0 and breaks the other engine's containers.

ci_engine_dir=$(mktemp -d /var/lib/cudabox-ci-engine.XXXXXX)
ci_engine_bridge=cbxci0
ci_engine_subnet=${CUDABOX_CI_SUBNET:-172.31.254.1/24}

ci_engine_stop() {
  local pid
  if [ -f "$ci_engine_dir/docker.pid" ]; then
    pid=$(cat "$ci_engine_dir/docker.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 1
    done
    kill -9 "$pid" 2>/dev/null || true
  fi
  # dockerd unmounts its layers when it stops; anything still mounted below is lazily detached.
  grep -o " $ci_engine_dir[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$ci_engine_dir"
  ip link delete "$ci_engine_bridge" 2>/dev/null || true
  echo "ci: engine removed ($ci_engine_dir)"
}

if ! command -v dockerd >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi
if ! ip link show "$ci_engine_bridge" >/dev/null 2>&1; then
  ip link add "$ci_engine_bridge" type bridge
  ip addr add "$ci_engine_subnet" dev "$ci_engine_bridge"
fi
ip link set "$ci_engine_bridge" up

trap ci_engine_stop EXIT
setsid dockerd \
  --data-root "$ci_engine_dir/data" --exec-root "$ci_engine_dir/exec" \
  --pidfile "$ci_engine_dir/docker.pid" --host "unix://$ci_engine_dir/docker.sock" \
  --bridge "$ci_engine_bridge" \
  >"$ci_engine_dir/dockerd.log" 2>&1 </dev/null &
export DOCKER_HOST="unix://$ci_engine_dir/docker.sock"
for _ in $(seq 1 60); do
  docker info >/dev/null 2>&1 && break
  sleep 1
done
if ! docker info >/dev/null 2>&1; then
  echo "ci: the CI engine did not start; its log:" >&2
  tail -n 30 "$ci_engine_dir/dockerd.log" >&2
  exit 1
fi
echo "ci: empty engine at $DOCKER_HOST: $(docker images -aq | wc -l) images," \
  "$(docker ps -aq | wc -l) containers, build cache $(docker system df --format '{{.Size}}' | tail -n 1)"
