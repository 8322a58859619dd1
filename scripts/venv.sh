# Sourced by scripts/test-all, scripts/check-infra and scripts/clients.
# venv_at DIR REQUIREMENTS: makes the venv DIR hold exactly REQUIREMENTS (reinstalling only when
# that file changes). venv_ready: .venv from scripts/requirements.txt, put on PATH.
venv_at() {
  local dir=$1 reqs=$2 stamp want
  stamp=$dir/.requirements.sha256
  want=$(sha256sum "$reqs" | cut -d' ' -f1)
  if [ ! -x "$dir/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    printf '\n== python venv (%s): %s\n' "$dir" "$reqs" >&2
    python3 -m venv "$dir"
    "$dir/bin/pip" install --quiet --disable-pip-version-check -r "$reqs"
    echo "$want" >"$stamp"
  fi
}

venv_ready() {
  venv_at .venv scripts/requirements.txt
  export PATH="$PWD/.venv/bin:$PATH" SAM_CLI_TELEMETRY=0
}
