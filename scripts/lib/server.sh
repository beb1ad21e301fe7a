# Sourced by the scripts that start a server with `--port 0 --port-file FILE`: waits until
# the port is written and /ready answers 200, then sets `base`. Fails with the server's log
# if it exits first or is not ready within 300 s.
wait_for_server() { # PID PORT_FILE LOG
  local pid=$1 port_file=$2 log=$3 deadline=$((SECONDS + 300))
  until [ -s "$port_file" ] && curl -sf -o /dev/null "http://127.0.0.1:$(cat "$port_file")/ready"; do
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; echo "the server exited before it was ready" >&2; exit 1; }
    (( SECONDS < deadline )) || { cat "$log" >&2; echo "the server was not ready after 300 s" >&2; exit 1; }
    sleep 0.1
  done
  base="http://127.0.0.1:$(cat "$port_file")"
}
