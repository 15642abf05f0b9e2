#!/usr/bin/env bash
# Install Debian's CJK font packages, the styles behind `lscindex data glyphs OUT --fonts system`.
#
# About 20 families in several weights: Noto Sans/Serif CJK (all weights), AR PL (Arphic), WenQuanYi,
# IPA/IPAex, cwTeX, Hanazono, BabelStone Han, LXGW WenKai, CNS 11643, VL Gothic, Seto, Sawarabi,
# Nanum and Un (Hangul). Roughly 1.1 GB on disk.
#
# Usage: scripts/install-cjk-fonts.sh        (as root, or through sudo)
# Safe to run again: installed packages are left as they are, and packages this Debian release
# does not carry are skipped by name.
set -euo pipefail

PACKAGES=(
  fonts-noto-cjk fonts-noto-cjk-extra
  fonts-arphic-ukai fonts-arphic-uming
  fonts-arphic-bkai00mp fonts-arphic-bsmi00lp fonts-arphic-gbsn00lp fonts-arphic-gkai00mp
  fonts-wqy-zenhei fonts-wqy-microhei
  fonts-ipafont-gothic fonts-ipafont-mincho fonts-ipaexfont-gothic fonts-ipaexfont-mincho
  fonts-cwtex-fs fonts-cwtex-heib fonts-cwtex-kai fonts-cwtex-ming fonts-cwtex-yen
  fonts-hanazono fonts-babelstone-han fonts-lxgw-wenkai
  fonts-cns11643-kai fonts-cns11643-sung
  fonts-vlgothic fonts-seto fonts-sawarabi-gothic fonts-sawarabi-mincho
  fonts-nanum fonts-unfonts-core
)

if [[ "$(id -u)" -eq 0 ]]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo)
else
  echo "error: this script installs packages with apt-get; run it as root or install sudo" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: apt-get not found; this script is for Debian/Ubuntu. Pass any folder of .ttf/.otf/.ttc" \
    "files to 'lscindex data glyphs --fonts DIR' instead" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update

available=()
for pkg in "${PACKAGES[@]}"; do
  candidate="$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2}')"
  if [[ -n "$candidate" && "$candidate" != "(none)" ]]; then
    available+=("$pkg")
  else
    echo "skipping $pkg: not available in this release" >&2
  fi
done
if [[ ${#available[@]} -eq 0 ]]; then
  echo "error: none of the CJK font packages is available; check /etc/apt/sources.list" >&2
  exit 1
fi

"${SUDO[@]}" apt-get install -y --no-install-recommends "${available[@]}"
if command -v fc-cache >/dev/null 2>&1; then
  "${SUDO[@]}" fc-cache -f >/dev/null
fi
echo "installed ${#available[@]} CJK font packages; build with: lscindex data glyphs OUT --fonts system"
