# launch/deps.sh: sourced by the set-up scripts; installs mlmpi's Debian
# packages when they are missing (as root), or says which are missing.
mlmpi_deps=(
  build-essential cmake pkg-config
  libopenblas-openmp-dev libdnnl-dev libcjson-dev libinih-dev libgtest-dev
  libopenmpi-dev openmpi-bin libprotobuf-c-dev protobuf-c-compiler
  python3 python3-numpy python3-torch python3-protobuf
  libpcre2-dev libutf8proc-dev libnng-dev iproute2 gnuplot-nox slurm-wlm munge
  sentencepiece bible-kjv wordnet-base
  clang libclang-rt-14-dev libomp-dev python3-sentencepiece
)

mlmpi_install_deps() {
  local missing=() p
  for p in "${mlmpi_deps[@]}" "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  # Node.js and npm (for the reference encoders) may come from elsewhere than
  # Debian (NodeSource ships npm inside nodejs): only ask Debian when absent.
  command -v node >/dev/null 2>&1 || missing+=(nodejs)
  command -v npm >/dev/null 2>&1 || missing+=(npm)
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "mlmpi: missing Debian packages: ${missing[*]}" >&2
    echo "mlmpi: install them as root: apt-get install ${missing[*]}" >&2
    return 1
  fi
  echo "mlmpi: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Installs the npm packages a folder's package.json pins (reference encoders
# for the tests), once: npm ci when a lock file is there.
mlmpi_install_npm() {
  local dir=$1
  [ -f "$dir/package.json" ] || return 0
  [ -d "$dir/node_modules" ] && [ "$dir/node_modules" -nt "$dir/package.json" ] && return 0
  echo "mlmpi: installing npm packages in $dir" >&2
  if [ -f "$dir/package-lock.json" ]; then
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  else
    (cd "$dir" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
  fi
}
