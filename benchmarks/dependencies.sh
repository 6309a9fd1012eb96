#!/usr/bin/env bash
# Side-by-side benchmark of the dependency upgrades (README, Performance, "Dependencies"):
# the worker's own benchmark once per combination of aio-pika 9/10 and SQLAlchemy 2.0/2.1, each
# from its own copy of the source and its own venv (under $DEPBENCH_DIR, default
# /tmp/coupon-depbench). The worker runs unchanged on all four.
#
#   bash benchmarks/dependencies.sh SRC OUT [COMBO ...]     (e.g. SRC=. OUT=/tmp/deps)
#
# SRC   a git checkout of coupon-worker (its committed HEAD is copied with `git clone`;
#       uncommitted changes in SRC are NOT measured)
# OUT   results: OUT/<combo>/<stamp>.json, latest.json, bench-<stamp>.log, freeze.txt, source.txt
# COMBO any of A B C D, in the order to run them (default: A B C D, or $DEPBENCH_COMBOS);
#       a combo may repeat (e.g. A B C D D C B A): each run adds its own result file
#
#   A  aio-pika 10 / aiormq 7 + SQLAlchemy 2.1   (exactly as locked in SRC/uv.lock)
#   B  aio-pika 10 / aiormq 7 + SQLAlchemy 2.0   (latest 2.0.x)
#   C  aio-pika 9 / aiormq 6  + SQLAlchemy 2.1   (latest 9.x with its aiormq 6 / pamqp 3)
#   D  aio-pika 9 / aiormq 6  + SQLAlchemy 2.0
#
# Environment: BENCH_ARGS (the benchmark's flags, default below), DEPBENCH_PAUSE (seconds of
# idle between two combos' runs, default 0), DEPBENCH_SETUP_ONLY=1 (prepare, measure nothing),
# DEPBENCH_SKIP_SETUP=1 (reuse the copies and venvs
# as they are: no clone, no install), AMQP_URL / DATABASE_URL (defaults: the local services).
# All venvs and copies are prepared BEFORE the first benchmark starts, so no install runs
# while a combo is being measured.
set -euo pipefail

HERE=${DEPBENCH_DIR:-/tmp/coupon-depbench}
PY=python3
export UV_PYTHON_DOWNLOADS=never
unset VIRTUAL_ENV CONDA_PREFIX PYTHONPATH 2>/dev/null || true

# The old versions under test: the latest of each old line (checked 2026-11; pinned so that the
# four venvs stay comparable between runs; change here to move them).
AIO_PIKA_9=${AIO_PIKA_9:-9.6.2}
AIORMQ_6=${AIORMQ_6:-6.9.4}   # what aio-pika 9.6.2 resolves to (aiormq>=6.8,<7)
PAMQP_3=${PAMQP_3:-3.3.0}     # aiormq 6.9.4 pins pamqp==3.3.0
SQLALCHEMY_20=${SQLALCHEMY_20:-2.0.58}

DEFAULT_BENCH_ARGS="--workloads create redeem redeem-hot --commands 20000 --memory-commands 20000 --memory-workload create --latency-seconds 10"
BENCH_ARGS=${BENCH_ARGS:-$DEFAULT_BENCH_ARGS}
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/}
export DATABASE_URL=${DATABASE_URL:-postgresql+asyncpg://postgres@127.0.0.1:5432/postgres}

die() { echo "depbench: $*" >&2; exit 2; }

[ $# -ge 2 ] || die "usage: run.sh SRC OUT [A|B|C|D ...]"
SRC=$(realpath "$1")
OUT=$(realpath -m "$2")
shift 2
if [ $# -gt 0 ]; then COMBOS=("$@"); else read -r -a COMBOS <<<"${DEPBENCH_COMBOS:-A B C D}"; fi
for c in "${COMBOS[@]}"; do
    case $c in A|B|C|D) ;; *) die "unknown combo '$c' (A B C D)";; esac
done
git -C "$SRC" rev-parse --verify -q HEAD >/dev/null || die "$SRC is not a git checkout"
case "$OUT/" in "$SRC"/*) die "OUT must not be inside SRC";; esac
[ -f "$SRC/uv.lock" ] || die "$SRC/uv.lock missing"
if [ -n "$(git -C "$SRC" status --porcelain --untracked-files=no)" ]; then
    echo "depbench: note: $SRC has uncommitted changes; they are NOT measured (HEAD $(git -C "$SRC" rev-parse --short HEAD) is)" >&2
fi

overrides() {  # the version overrides of one combo, as uv override lines
    case $1 in
        A) ;;
        B) echo "sqlalchemy==$SQLALCHEMY_20" ;;
        C) printf '%s\n' "aio-pika==$AIO_PIKA_9" "aiormq==$AIORMQ_6" "pamqp==$PAMQP_3" ;;
        D) printf '%s\n' "aio-pika==$AIO_PIKA_9" "aiormq==$AIORMQ_6" "pamqp==$PAMQP_3" \
                         "sqlalchemy==$SQLALCHEMY_20" ;;
    esac
}

prepare() {  # fresh copy of SRC's HEAD; venv created once, synced to SRC's lock
    local combo=$1 src=$HERE/src-$1 venv=$HERE/venvs/$1 work=$HERE/work/$1
    echo "== $combo: preparing ($src, $venv)"
    rm -rf "$src" "$work"
    mkdir -p "$work" "$HERE/venvs"
    git clone -q "$SRC" "$src"
    [ -x "$venv/bin/python" ] || "$PY" -m uv venv -q --python 3.11 "$venv"
    "$PY" -m uv export -q --project "$src" --frozen --all-extras --no-hashes \
        --no-emit-project --no-header -o "$work/requirements.txt"
    overrides "$combo" >"$work/overrides.txt"
    # --exact: a reused venv ends up with exactly SRC's locked set, the overrides applied.
    "$PY" -m uv pip install -q --exact --python "$venv/bin/python" \
        -r "$work/requirements.txt" --override "$work/overrides.txt" -e "$src"
    check_versions "$combo"
}

versions() {  # "aio-pika aiormq sqlalchemy" as installed in a combo's venv
    "$HERE/venvs/$1/bin/python" - <<'EOF'
from importlib.metadata import version
print(" ".join(version(n) for n in ("aio-pika", "aiormq", "sqlalchemy")))
EOF
}

check_versions() {  # fail before measuring if a venv does not hold the combo's versions
    local combo=$1 pika rmq sqla
    read -r pika rmq sqla <<<"$(versions "$combo")"
    local want_pika want_sqla
    case $combo in A|B) want_pika=10.;; C|D) want_pika=9.;; esac
    case $combo in A|C) want_sqla=2.1.;; B|D) want_sqla=2.0.;; esac
    case $pika in "$want_pika"*) ;; *) die "$combo: aio-pika $pika, expected $want_pika*";; esac
    case $sqla in "$want_sqla"*) ;; *) die "$combo: sqlalchemy $sqla, expected $want_sqla*";; esac
    # Every combo imports the whole worker before it is measured.
    (cd "$HERE/src-$combo" && "$HERE/venvs/$combo/bin/python" -c \
        'import worker.entrypoints.run, worker.entrypoints.cli, benchmarks.runner, benchmarks.ceiling') \
        || die "$combo: the worker does not import"
}

read -r -a UNIQUE <<<"$(printf '%s\n' "${COMBOS[@]}" | awk '!seen[$0]++' | tr '\n' ' ')"
if [ "${DEPBENCH_SKIP_SETUP:-0}" != 1 ]; then
    for c in "${UNIQUE[@]}"; do prepare "$c"; done
else
    for c in "${UNIQUE[@]}"; do check_versions "$c"; done
fi
if [ "${DEPBENCH_SETUP_ONLY:-0}" = 1 ]; then
    for c in "${UNIQUE[@]}"; do echo "$c  $(versions "$c")  prepared"; done
    exit 0
fi

STATUS=() RESULT=()
for i in "${!COMBOS[@]}"; do
    c=${COMBOS[$i]}
    if [ "$i" != 0 ] && [ "${DEPBENCH_PAUSE:-0}" != 0 ]; then sleep "$DEPBENCH_PAUSE"; fi
    dir=$OUT/$c
    log=$dir/bench-$(date -u +%Y%m%dT%H%M%SZ).log
    mkdir -p "$dir"
    rm -f "$dir/latest.json"
    "$PY" -m uv pip freeze -q --python "$HERE/venvs/$c/bin/python" >"$dir/freeze.txt"
    {
        echo "SRC=$SRC"
        echo "HEAD=$(git -C "$HERE/src-$c" rev-parse HEAD)"
    } >"$dir/source.txt"
    echo "== $c: python -m benchmarks $BENCH_ARGS --output-dir $dir   ($(date -u +%H:%M:%SZ))"
    set +e
    # shellcheck disable=SC2086  # BENCH_ARGS is a list of flags
    (cd "$HERE/src-$c" && exec "$HERE/venvs/$c/bin/python" -m benchmarks $BENCH_ARGS \
        --output-dir "$dir") 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
    if [ "$rc" = 0 ]; then STATUS[$i]=passed; else STATUS[$i]="FAILED(exit $rc)"; fi
    if [ "$rc" = 0 ] && [ -f "$dir/latest.json" ]; then
        RESULT[$i]=$dir/$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["file"])' "$dir/latest.json")
    else
        RESULT[$i]="(no result file; log $log)"
    fi
done

echo
echo "== depbench summary (BENCH_ARGS: $BENCH_ARGS)"
failed=0
for i in "${!COMBOS[@]}"; do
    c=${COMBOS[$i]}
    read -r pika rmq sqla <<<"$(versions "$c")"
    printf '%s  aio-pika %-7s aiormq %-7s sqlalchemy %-7s %-16s %s\n' \
        "$c" "$pika" "$rmq" "$sqla" "${STATUS[$i]}" "${RESULT[$i]}"
    [ "${STATUS[$i]}" = passed ] || failed=1
done
exit $failed
