# Sourced by scripts/test-all and scripts/check-infra: makes .venv hold exactly
# scripts/requirements.txt (reinstalling only when that file changes) and puts it on PATH.
venv_ready() {
  local stamp=.venv/.requirements.sha256 want
  want=$(sha256sum scripts/requirements.txt | cut -d' ' -f1)
  if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    printf '\n== python venv (.venv): scripts/requirements.txt\n' >&2
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check -r scripts/requirements.txt
    echo "$want" >"$stamp"
  fi
  export PATH="$PWD/.venv/bin:$PATH" SAM_CLI_TELEMETRY=0
}
