#!/usr/bin/env bash
# Scheduled retraining, the same locally and in CI (.github/workflows/retrain.yml,
# examples/ci/.gitlab-ci.yml): runs the pipeline against a persistent artifact store, so only
# the stages whose inputs changed (new data, new params) run and the others come from the cache;
# then writes OUT/summary.json (the run's --json summary), OUT/summary.md (outcome and the
# metrics diff against the previous run, also appended to $GITHUB_STEP_SUMMARY when set),
# OUT/export/ (the exported model) and, when `pipeline report` exists, OUT/report/.
#
# Environment:
#   ARTIFACTS  artifact store folder (default: artifacts); keep it between runs (CI cache)
#   PIPELINE   pipeline file (default: pipelines/two-phase-finetune.yaml)
#   OUT        where the summary, export and report go (default: retrain-out)
# Exit code: the run's (0 ok; 1 a stage or a metric gate failed; 2 invalid file; 3 store locked;
# 130 interrupted). The summary, export and report are written whatever it is.
# Needs the package built (npm ci / npm install run `tsc` through `prepare`).
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ARTIFACTS="${ARTIFACTS:-artifacts}"
PIPELINE="${PIPELINE:-pipelines/two-phase-finetune.yaml}"
OUT="${OUT:-retrain-out}"
pipeline=(node "$root/bin/pipeline.js")

mkdir -p "$OUT" || exit 2
echo "retrain: $PIPELINE with store $ARTIFACTS -> $OUT" >&2

# --json: stdout is the one summary object; stage lines and progress go to stderr (the job log).
"${pipeline[@]}" run "$PIPELINE" --json --artifacts "$ARTIFACTS" > "$OUT/summary.json"
status=$?

node "$root/dist/scripts/retrain-summary.js" "$OUT/summary.json" "$ARTIFACTS" "$OUT" "$PIPELINE" || echo "retrain: could not write the job summary" >&2

# The HTML/Markdown run report, where this version of the CLI has the command.
run_id="$(node -e 'try { const s = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")); if (s.run) console.log(s.run); } catch {}' "$OUT/summary.json")"
if [ -n "$run_id" ] && "${pipeline[@]}" report --help > /dev/null 2>&1; then
  mkdir -p "$OUT/report"
  if "${pipeline[@]}" report "$run_id" --artifacts "$ARTIFACTS" --out "$OUT/report/report.html" >&2; then
    # report.md is written beside the HTML in the store: carry it along for CI comments.
    for f in "$ARTIFACTS/runs/$run_id"/report.*; do [ -e "$f" ] && [ ! -e "$OUT/report/$(basename "$f")" ] && cp "$f" "$OUT/report/"; done
  else
    echo "retrain: pipeline report failed; the run's outcome stands" >&2
  fi
fi

echo "retrain: run ${run_id:-(none)} exited $status" >&2
exit "$status"
