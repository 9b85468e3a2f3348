# scripts/lib.sh: set-up shared by scripts/test and scripts/demo. Installs what is missing (Debian
# packages through apt) and configures + builds a build folder. Sourced, not run.

GLAKE_ROOT=$(CDPATH= cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)  # CDPATH= : else cd may print the folder
GLAKE_PACKAGES=(meson ninja-build pkg-config g++ libfmt-dev nlohmann-json3-dev libgtest-dev libgmock-dev
                libunwind-dev zlib1g-dev python3 binutils chromium fonts-dejavu-core)

glake_install_deps() {
  local missing=() p
  for p in "${GLAKE_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "glake: installing ${missing[*]}" >&2
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

glake_check_cuda_headers() {
  local root=${CUDA_ROOT:-/usr/local/cuda}
  if [ ! -f "$root/include/cuda.h" ]; then
    echo "glake: CUDA toolkit headers not found at $root/include (set CUDA_ROOT)" >&2
    return 1
  fi
}

# glake_build DIR [meson options...]: configure DIR once, then build it.
glake_build() {
  local dir=$1; shift
  if [ ! -f "$GLAKE_ROOT/$dir/build.ninja" ]; then
    meson setup "$GLAKE_ROOT/$dir" "$GLAKE_ROOT" -Dtoolkit_root="${CUDA_ROOT:-/usr/local/cuda}" "$@" >/dev/null || return 1
  fi
  ninja -C "$GLAKE_ROOT/$dir" >/dev/null || ninja -C "$GLAKE_ROOT/$dir"
}

glake_setup() {
  glake_install_deps && glake_check_cuda_headers && glake_build build
}
