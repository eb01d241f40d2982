#!/usr/bin/env bash
# Installs what the SoftHSM rig needs, when missing: SoftHSM2 (the PKCS#11 module and
# softhsm2-util) and OpenSC (pkcs11-tool, used by the tests to look at the token from
# outside our code). Debian/Ubuntu only; runs apt-get as root, or through sudo.
# Idempotent: with everything present it only says so.
set -euo pipefail

# Where Debian and Ubuntu put the module (the path institution.toml uses by default).
MODULE=${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}

need=()
if [ ! -e "$MODULE" ] || ! command -v softhsm2-util >/dev/null 2>&1; then
  need+=(softhsm2)
fi
command -v pkcs11-tool >/dev/null 2>&1 || need+=(opensc)

if [ ${#need[@]} -eq 0 ]; then
  echo "hsm-config/setup.sh: SoftHSM2 ($MODULE) and OpenSC (pkcs11-tool) present"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "hsm-config/setup.sh: missing ${need[*]}; this script knows only apt-get (Debian/Ubuntu)." >&2
  echo "  Install SoftHSM2 and OpenSC with your package manager, then set [hsm] module" >&2
  echo "  in your configuration to the path of libsofthsm2.so." >&2
  exit 2
fi

if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo)
else
  echo "hsm-config/setup.sh: missing packages ${need[*]} and neither root nor sudo: install them and retry" >&2
  exit 2
fi

echo "hsm-config/setup.sh: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${need[@]}"

if [ ! -e "$MODULE" ]; then
  found=$(dpkg -L softhsm2-common libsofthsm2 softhsm2 2>/dev/null | grep -m1 '/libsofthsm2\.so$' || true)
  echo "hsm-config/setup.sh: installed, but $MODULE does not exist${found:+; the module is at $found}" >&2
  echo "  Point [hsm] module (and SOFTHSM2_MODULE for the tests) at it." >&2
  exit 1
fi
echo "hsm-config/setup.sh: SoftHSM2 ($MODULE) and OpenSC (pkcs11-tool) installed"
