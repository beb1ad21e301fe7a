# Sourced by the scripts that need a Debian package's command: installs the package (as root)
# when the command is missing.
need_command() { # COMMAND [PACKAGE, default COMMAND]
  command -v "$1" >/dev/null && return
  echo "$(basename "$0"): installing ${2:-$1} from Debian" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${2:-$1}" >/dev/null
}
