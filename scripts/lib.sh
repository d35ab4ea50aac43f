# Shared by the scripts that start real nodes on this machine: source it once `bin` (the
# ammotrace binary) is set. Every node started here is listed in `pids`; `stop_nodes` (for
# an EXIT trap) stops them all.

pids=() # every node started here
pid=""  # the last one
url=""  # the last one's API base URL (start_node)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now_ms() { date +%s%3N; }
# cpu_ms PID: the CPU time (user + system) the process has used so far, in ms.
cpu_ms() { awk -v hz="$(getconf CLK_TCK)" '{printf "%d\n", ($14 + $15) * 1000 / hz}' "/proc/$1/stat"; }
json_get() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

# launch_node DATA_DIR [FEDERATION_PORT]: starts a node in the background, its API on a free
# port of 127.0.0.1 and its federation API on FEDERATION_PORT (a free one if not given),
# logging to DATA_DIR.log (RUST_LOG from BENCH_LOG, default warnings only).
launch_node() {
  RUST_LOG="${BENCH_LOG:-ammotrace=warn}" "$bin" serve --data-dir "$1" --listen 127.0.0.1:0 \
    --federation-listen "127.0.0.1:${2:-0}" >"$1.log" 2>&1 &
  pid=$!
  pids+=("$pid")
}

# node_url DATA_DIR: waits (60 s at most) until the node launched on DATA_DIR answers
# /healthz and prints its API base URL; prints the node's log and fails if it never does.
node_url() {
  local u=""
  for _ in $(seq 1 3000); do
    u="$(sed -n 's#^ *API: *\(http://[^/ ]*\)/api/v1.*#\1#p' "$1.log")"
    if [ -n "$u" ] && curl -sf "$u/healthz" >/dev/null; then
      echo "$u"
      return 0
    fi
    sleep 0.02
  done
  cat "$1.log" >&2
  return 1
}

# start_node DATA_DIR [FEDERATION_PORT]: launch_node, then waits for it; sets `pid` and `url`.
start_node() {
  launch_node "$@"
  url="$(node_url "$1")" || exit 1
}

# stop_nodes: stops every node started here and waits for them.
stop_nodes() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
