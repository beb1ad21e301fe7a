# Sourced by the scripts that build and start the server.

# Installs ONNX Runtime when missing and builds the release binary, saying so first (the
# first build takes minutes).
build_release() {
  scripts/fetch-onnxruntime
  [ -x target/release/embedserve ] || echo "$(basename "$0"): building embedserve in release mode (the first build takes several minutes)" >&2
  cargo build --locked --release
}

# Waits until the port is written and /ready answers 200, then sets `base`. Fails with the
# server's log if it exits first or is not ready within 300 s.
wait_for_server() { # PID PORT_FILE LOG
  local pid=$1 port_file=$2 log=$3 deadline=$((SECONDS + 300))
  until [ -s "$port_file" ] && curl -sf -o /dev/null "http://127.0.0.1:$(cat "$port_file")/ready"; do
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; echo "the server exited before it was ready" >&2; exit 1; }
    (( SECONDS < deadline )) || { cat "$log" >&2; echo "the server was not ready after 300 s" >&2; exit 1; }
    sleep 0.1
  done
  base="http://127.0.0.1:$(cat "$port_file")"
}

# Starts the release binary on a free port (`--port 0 --port-file`) with its log in LOG and
# waits until it is ready: sets `server_pid` and `base`. A server this script started
# before is stopped first; `stop_server` runs on exit unless the script sets its own trap
# (which should call it).
server_pid=""
start_server() { # PORT_FILE LOG [SERVE ARGUMENTS...]
  local port_file=$1 log=$2
  shift 2
  stop_server
  rm -f "$port_file"
  target/release/embedserve serve --port 0 --port-file "$port_file" "$@" 2> "$log" &
  server_pid=$!
  wait_for_server "$server_pid" "$port_file" "$log"
}
stop_server() {
  [ -z "$server_pid" ] || { kill "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null || true; server_pid=""; }
}
trap stop_server EXIT
