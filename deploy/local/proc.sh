# Shared by the scripts of deploy/local that run servers in the background
# (source it): a pid file per server.

# wait_started PIDFILE WHAT READY LOG...: waits until the command READY
# succeeds; if the process in PIDFILE exits first, or 60 s pass, it shows
# the last lines of the LOG files and exits 1.
wait_started() {
  local pidfile=$1 what=$2 ready=$3
  shift 3
  for _ in $(seq 1 120); do
    if $ready; then return 0; fi
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      echo "$what exited; last log lines:" >&2; tail -20 "$@" >&2 || true; exit 1
    fi
    sleep 0.5
  done
  echo "$what did not answer within 60 s" >&2; exit 1
}

# stop_pid PIDFILE: asks the process to end (SIGTERM), waits until it has
# exited, so that a start right after finds its ports free, and kills it
# (SIGKILL) after 60 s.
stop_pid() {
  [ -f "$1" ] || return 0
  local pid; pid=$(cat "$1")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 1 600); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$1"
}
