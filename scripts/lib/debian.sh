# Sourced by the scripts that need a Debian package's command: installs the package (as root)
# when the command is missing, without the packages it only recommends.
apt_updated=false
need_command() { # COMMAND [PACKAGE, default COMMAND's name]
  command -v "$1" >/dev/null && return
  local package="${2:-$(basename "$1")}"
  echo "$(basename "$0"): installing $package from Debian" >&2
  $apt_updated || { apt-get update -qq; apt_updated=true; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$package" >/dev/null
}
