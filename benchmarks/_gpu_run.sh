# Sourced by the benchmarks/gpu_*.sh scripts: run NAME [OVERRIDES...] runs the app with the script's
# "${common[@]}" overrides into $out/NAME (log in $out/NAME.log), stopped after $limit seconds.
run() {
  local name=$1; shift
  local t0=$SECONDS
  timeout "$limit" python3 -m maia_adapt.run "${common[@]}" hydra.run.dir="$out/$name" "$@" >"$out/$name.log" 2>&1
  echo "$name: exit $? after $((SECONDS - t0)) s"
}
