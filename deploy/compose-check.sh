#!/usr/bin/env bash
# Runs docker-compose.yml for real and checks what docs/scaling.md promises:
#
#   1. `up` with 4 workers trains the exp3 grid (27 points) on a subset: 27 COMPLETE
#      points, each exactly once (0 duplicates), 0 RUNNING, in `hpo status` and in
#      `hpo export --format csv` run through the stack;
#   2. `docker kill` of the worker container holding a running trial (two epochs or
#      more reported), and `docker stop -t 10` of another: the stopped worker exits by
#      itself (130) within the 10 s; both points are retried and finished, each retry
#      going on from the run's checkpoint (resumed_from_epoch);
#   3. the dashboard answers on 127.0.0.1 only, lists the study and serves an artifact;
#   4. `down` and a second `up` (one worker) keep the results (named volumes);
#   5. `hpo export` through the stack prints the table.
#
# It prints the time of each step, exits non-zero with a `FAIL:` line when a check
# fails, and removes the containers, network and volumes it made (not the images).
#
#   deploy/compose-check.sh                 # from the repository root, on a Docker host
#
# It runs as its own Compose project (HPO_CHECK_PROJECT, default hpo-check) with its own
# settings file, so it never touches a stack started from .env. Variables:
#   HPO_CHECK_DATA     the data set file (default ../shared/datasets/cifar10-jpeg.tar.gz,
#                      else data/cifar-10-python.tar.gz)
#   HPO_CHECK_SUBSET   images per trial (default 200)    HPO_CHECK_WORKERS (default 4)
#   HPO_CHECK_THREADS  threads per worker (default 1)    HPO_CHECK_PORT (default 8080)
#   HPO_CHECK_TIMEOUT  seconds for the training (default 3600)
#   HPO_CHECK_KEEP=1   keep the containers and volumes at the end
#   HPO_CHECK_WHEELS=DIR  for hosts whose containers cannot reach PyPI: `pip wheel` the
#                      dependencies into DIR on the host, serve DIR on the Docker bridge
#                      during the build (PIP_FIND_LINKS + PIP_NO_INDEX build args)
#   HPO_PYTHON_IMAGE, HPO_POSTGRES_IMAGE, HPO_IMAGE   as in docker-compose.yml
#   COMPOSE            the Compose command (default: `docker compose`, else docker-compose)
# Needs bash, python3 and curl on the host.
set -euo pipefail

cd "$(dirname "$0")/.."
project=${HPO_CHECK_PROJECT:-hpo-check}
subset=${HPO_CHECK_SUBSET:-200}
workers=${HPO_CHECK_WORKERS:-4}
threads=${HPO_CHECK_THREADS:-1}
port=${HPO_CHECK_PORT:-8080}
timeout=${HPO_CHECK_TIMEOUT:-3600}
study=exp3
points=27
if [[ -n ${HPO_CHECK_DATA:-} ]]; then data=$HPO_CHECK_DATA
elif [[ -f ../shared/datasets/cifar10-jpeg.tar.gz ]]; then data=../shared/datasets/cifar10-jpeg.tar.gz
else data=data/cifar-10-python.tar.gz; fi
if [[ -z ${COMPOSE:-} ]]; then
    if docker compose version >/dev/null 2>&1; then COMPOSE="docker compose"; else COMPOSE=docker-compose; fi
fi

t_all=$(date +%s)
fail() { echo "FAIL: $*" >&2; exit 1; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
declare -A started
timings=()
step_start() { started[$1]=$(date +%s); log "step $1"; }
step_end() {
    local t0=${started[$1]}
    local took=$(( $(date +%s) - t0 ))
    log "step $1: done in $took s"
    timings+=("step $1: $took s")
}

[[ -f $data ]] || fail "no data set at $data (set HPO_CHECK_DATA)"
data_dir=$(cd "$(dirname "$data")" && pwd)
work=$(mktemp -d)
env_file=$work/env
cat > "$env_file" <<EOF
COMPOSE_PROJECT_NAME=$project
POSTGRES_PASSWORD=$(python3 -c "import secrets; print(secrets.token_hex(16))")
HPO_STUDY=$study
HPO_DATA_DIR=$data_dir
HPO_DATA_FILE=$(basename "$data")
HPO_THREADS=$threads
HPO_CREATE_ARGS=--subset $subset
HPO_DASHBOARD_PORT=$port
EOF
compose() { $COMPOSE --env-file "$env_file" -p "$project" "$@"; }
# hpo run inside the dashboard container: no new container per call (cheap polling).
in_stack() { compose exec -T dashboard "$@"; }
# The trials of the study as JSON lines (number, state, epochs reported, planned,
# worker, host, params), read through Optuna inside the stack.
trials_json() {
    in_stack python -c '
import json, os, optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.load_study(study_name="'"$study"'", storage=os.environ["HPO_STORAGE"])
for t in study.get_trials(deepcopy=False):
    print(json.dumps({"number": t.number, "state": t.state.name,
                      "epochs": len(t.intermediate_values), "planned": t.params.get("epochs"),
                      "worker": t.system_attrs.get("hpo:worker"), "host": t.user_attrs.get("host"),
                      "resumed": t.user_attrs.get("resumed_from_epoch"),
                      "resumed_batches": t.user_attrs.get("resumed_from_batch"),
                      "all_attempts": t.user_attrs.get("epochs_trained_all_attempts"),
                      "params": t.params}))'
}

server_pid=
cleanup() {
    local rc=$?
    [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null
    if [[ ${HPO_CHECK_KEEP:-0} == 1 ]]; then
        log "kept: project $project (remove with: $COMPOSE -p $project down -v)"
    else
        compose down -v --remove-orphans >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
    if [[ $rc == 0 ]]; then
        log "all checks passed in $(( $(date +%s) - t_all )) s"
    else
        log "compose-check failed (exit $rc); worker logs: $COMPOSE -p $project logs worker"
    fi
    printf '  %s\n' "${timings[@]}" >&2
}
trap cleanup EXIT

log "compose: $($COMPOSE version --short 2>/dev/null || $COMPOSE version | head -1); engine: $(docker version -f '{{.Server.Version}}')"
log "project $project, data $data, $workers workers x $threads threads, --subset $subset"
compose down -v --remove-orphans >/dev/null 2>&1 || true

step_start "0 build"
build_args=()
if [[ -n ${HPO_CHECK_WHEELS:-} ]]; then
    mkdir -p "$HPO_CHECK_WHEELS"
    ${PIP:-pip} wheel -q -w "$HPO_CHECK_WHEELS" . "setuptools>=68" wheel 2>"$work/pip.log" \
        || { cat "$work/pip.log" >&2; fail "pip wheel failed"; }
    rm -f "$HPO_CHECK_WHEELS"/hpo-*.whl  # the image builds hpo from its own source
    # The host's address on Docker's default bridge, where build containers run.
    bridge=$(ip -4 -o addr show docker0 2>/dev/null | awk '{print $4}' | cut -d/ -f1)
    [[ -n $bridge ]] || fail "no docker0 address to serve the wheels on"
    python3 -m http.server --bind "$bridge" --directory "$HPO_CHECK_WHEELS" 8765 >/dev/null 2>&1 &
    server_pid=$!
    build_args=(--build-arg "PIP_FIND_LINKS=http://$bridge:8765/" --build-arg PIP_NO_INDEX=1
                --build-arg "PIP_TRUSTED_HOST=$bridge")
fi
compose build "${build_args[@]}" worker || fail "the image did not build"
step_end "0 build"

step_start "1 up --scale worker=$workers"
compose up -d --scale "worker=$workers" worker dashboard
deadline=$(( $(date +%s) + timeout ))

# A running trial with at least two epochs reported (so that the checkpoint of the first is
# surely written) and at least two still to run (so that it is still running when the
# signal lands), on a host other than $1: "number host epochs planned worker".
find_victim() {
    local found=
    while [[ -z $found ]]; do
        (( $(date +%s) < deadline )) || fail "no trial reached its second epoch in ${timeout} s"
        found=$(trials_json 2>/dev/null | python3 -c '
import json, sys
def host(t):
    return t["host"] or (t["worker"] or "").split("/")[0].split(":")[0]
running = [t for t in map(json.loads, sys.stdin) if t["state"] == "RUNNING" and t["epochs"] >= 2
           and t["planned"] and t["planned"] - t["epochs"] >= 2 and host(t) != sys.argv[1]]
if running:
    t = max(running, key=lambda t: t["planned"] - t["epochs"])
    print(t["number"], host(t), t["epochs"], t["planned"], t["worker"])' "${1:-}" || true)
        [[ -n $found ]] || sleep 1
    done
    echo "$found"
}
# The worker container whose host name is $1.
container_of() {
    local id
    for id in $(docker ps -q --no-trunc --filter "label=com.docker.compose.project=$project" \
                                       --filter label=com.docker.compose.service=worker); do
        [[ $(docker inspect -f '{{.Config.Hostname}}' "$id") == "$1" ]] && { echo "$id"; return; }
    done
    fail "host $1 is no running worker container of $project"
}

victim=$(find_victim)
read -r trial host epochs planned worker <<< "$victim"
container=$(container_of "$host")
step_start "2 docker kill and docker stop of workers mid-trial"
docker kill "$container" >/dev/null
log "killed container ${container:0:12} (host $host), which ran trial $trial at epoch $epochs of $planned (hpo:worker $worker)"
killed_at=${started["2 docker kill and docker stop of workers mid-trial"]}

# `docker stop` (SIGTERM, then SIGKILL after Docker's default 10 s) of another worker: it
# saves a checkpoint at the next batch boundary, fails its trial as retryable and exits
# by itself (130), well within the 10 s.
victim=$(find_victim "$host")
read -r stopped_trial stopped_host stopped_epochs stopped_planned _ <<< "$victim"
stopped=$(container_of "$stopped_host")
t0=$(date +%s.%N)
docker stop -t 10 "$stopped" >/dev/null
took=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$t0" "$(date +%s.%N)")
code=$(docker inspect -f '{{.State.ExitCode}}' "$stopped")
log "docker stop -t 10 of container ${stopped:0:12} (host $stopped_host), which ran trial $stopped_trial at epoch $stopped_epochs of $stopped_planned: exited $code after $took s"
[[ $code == 130 ]] || fail "the worker stopped by docker stop exited $code, not 130 (137: killed at the end of the 10 s)"

# Wait until every point is COMPLETE and nothing runs.
while :; do
    (( $(date +%s) < deadline )) || fail "the study did not finish in ${timeout} s"
    status=$(in_stack hpo status "$study" --format json 2>/dev/null || true)
    line=$(python3 -c '
import json, sys
try:
    s = json.loads(sys.argv[1])[0]
except (ValueError, IndexError):
    sys.exit()
print(s["points"]["complete"], s["points"]["running"], s["duplicates"], s["points"]["total"])' "$status") \
        || fail "hpo status --format json gave no points: $status"
    if [[ -n $line ]]; then
        read -r complete running dups total <<< "$line"
        log "status: $complete of $total points complete, $running running, $dups duplicates"
        [[ $complete == "$points" && $running == 0 ]] && break
    fi
    sleep 10
done
# Step 2's own check: neither the killed nor the stopped trial finished; a later trial of
# each point did, going on from the checkpoint the run left in the shared artifact volume.
python3 - "$(trials_json)" "killed:$trial" "stopped:$stopped_trial" >&2 <<'PY'
import json, sys
trials = [json.loads(l) for l in sys.argv[1].splitlines() if l.startswith("{")]
for how, number in (a.split(":") for a in sys.argv[2:]):
    number = int(number)
    hit = next(t for t in trials if t["number"] == number)
    if hit["state"] == "COMPLETE":
        sys.exit(f"FAIL: trial {number} completed before it was {how}; nothing was retried")
    if hit["state"] != "FAIL":
        sys.exit(f"FAIL: {how} trial {number} is {hit['state']}, not FAIL")
    retry = [t for t in trials if t["params"] == hit["params"] and t["number"] > number
             and t["state"] == "COMPLETE"]
    if not retry:
        sys.exit(f"FAIL: the point of {how} trial {number} {hit['params']} was not finished by a retry")
    done = retry[0]
    if not done["resumed"]:
        sys.exit(f"FAIL: trial {done['number']} finished the point of {how} trial {number} from epoch 0, "
                 "not from its checkpoint")
    print(f"{how} trial {number} is FAIL; its point {hit['params']} was finished by trial "
          f"{done['number']}, resumed_from_epoch {done['resumed']} (+{done['resumed_batches'] or 0} batches), "
          f"epochs_trained_all_attempts {done['all_attempts']} of {done['planned']}")
failed = sum(t["state"] == "FAIL" for t in trials)
print(f"{len(trials)} trials in all, {failed} FAIL (retried)")
PY
log "study finished $(( $(date +%s) - killed_at )) s after the kill"
step_end "2 docker kill and docker stop of workers mid-trial"

# Step 1's checks, through the stack as a user runs them: `run` a fresh worker container.
csv=$(compose run --rm --no-deps -T worker export "$study" --format csv)
status=$(compose run --rm --no-deps -T worker status "$study" --format json)
python3 - "$status" "$csv" "$points" >&2 <<'PY'
import csv, io, json, sys
s = json.loads(sys.argv[1])[0]
p = s["points"]
if (p["complete"], p["running"], s["duplicates"]) != (int(sys.argv[3]), 0, 0):
    sys.exit(f"FAIL: hpo status: {p} duplicates={s['duplicates']}")
rows = list(csv.DictReader(io.StringIO(sys.argv[2])))
complete = [r for r in rows if r["state"] == "COMPLETE"]
points = {(r["learning_rate"], r["batch_size"], r["epochs"]) for r in complete}
if len(complete) != int(sys.argv[3]) or len(points) != len(complete):
    sys.exit(f"FAIL: hpo export: {len(complete)} COMPLETE rows, {len(points)} distinct points")
print(f"hpo status: {p['complete']} of {p['total']} points COMPLETE, {p['running']} RUNNING, "
      f"{s['duplicates']} duplicates, trials by state {s['trials']}; hpo export: "
      f"{len(complete)} COMPLETE rows, {len(points)} distinct points")
PY
step_end "1 up --scale worker=$workers"

step_start "3 dashboard on 127.0.0.1:$port"
dash=$(compose ps -q dashboard)
published=$(docker port "$dash" 8080/tcp)
log "docker port: $(echo "$published" | tr '\n' ' ')"
[[ $(echo "$published" | grep -cv "^127\.0\.0\.1:$port$" || true) == 0 ]] \
    || fail "dashboard published beyond the loopback: $published"
if command -v ss >/dev/null; then
    listen=$(ss -ltnH "sport = :$port" | awk '{print $4}' | sort -u | tr '\n' ' ')
    log "listening on port $port: $listen"
    [[ $listen == "127.0.0.1:$port " ]] || fail "port $port listens on $listen, not on 127.0.0.1 alone"
fi
for _ in $(seq 30); do curl -fsS -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null && break; sleep 2; done
curl -fsS -o /dev/null "http://127.0.0.1:$port/" || fail "no answer from http://127.0.0.1:$port/"
studies=$(curl -fsS "http://127.0.0.1:$port/api/studies")
study_id=$(python3 -c '
import json, sys
ids = [s["study_id"] for s in json.loads(sys.argv[1])["study_summaries"] if s["study_name"] == sys.argv[2]]
print(ids[0] if ids else "")' "$studies" "$study") 
[[ -n $study_id ]] || fail "/api/studies does not list $study"
detail=$(curl -fsS "http://127.0.0.1:$port/api/studies/$study_id?after=0")
artifact=$(python3 -c '
import json, sys
for t in json.loads(sys.argv[1])["trials"]:
    for a in t.get("artifacts", []):
        if a["filename"].endswith(".png"):
            print(t["trial_id"], a["artifact_id"], a["filename"]); sys.exit()' "$detail")
[[ -n $artifact ]] || fail "the dashboard shows no PNG artifact for any trial of $study"
read -r trial_id artifact_id filename <<< "$artifact"
url="http://127.0.0.1:$port/artifacts/$study_id/$trial_id/$artifact_id"
# To a file, not through `head`: under pipefail, curl's write error on a closed pipe
# would fail the check.
curl -fsS -o "$work/artifact" "$url" || fail "no artifact at $url"
[[ $(head -c 4 "$work/artifact" | tail -c 3) == PNG ]] || fail "$url is not a PNG"
log "/api/studies lists $study (id $study_id); $url serves $filename"
step_end "3 dashboard on 127.0.0.1:$port"

step_start "4 down, then up again"
compose down
# One worker this time: it finds the study done and exits 0. (Every container is a full
# copy of the 2.6 GB image under the vfs storage driver, and the disk here is shared.)
compose up -d --scale worker=1 worker dashboard
status=$(in_stack hpo status "$study" --format json)
python3 - "$status" "$points" >&2 <<'PY'
import json, sys
s = json.loads(sys.argv[1])[0]
if s["points"]["complete"] != int(sys.argv[2]) or s["duplicates"]:
    sys.exit(f"FAIL: after down and up: {s['points']}, {s['duplicates']} duplicates")
print(f"after down and up: {s['points']['complete']} of {s['points']['total']} points COMPLETE")
PY
step_end "4 down, then up again"

step_start "5 hpo export"
table=$(compose run --rm --no-deps -T worker export "$study")
echo "$table"
[[ $(echo "$table" | grep -c COMPLETE) == "$points" ]] || fail "hpo export does not show $points COMPLETE rows"
step_end "5 hpo export"
