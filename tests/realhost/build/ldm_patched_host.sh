#!/usr/bin/env bash
# Build (or bring up to date) a CPU-only real host of the old-Forge (`ldm_patched`) line for ASAG's real-host
# checks (tests/realhost/test_forge_family.py):
#
#   HOST=reforge|classic MIRROR=/work/.mirror TARGET=/work/hosts/$HOST bash ldm_patched_host.sh
#
# What it does (README):
#   - clones the host from the local bare mirror ($MIRROR/OWNER+NAME/repo) at a fixed commit into TARGET/webui,
#     and the repositories its modules/launch_utils.py would clone at start into webui/repositories/
#       reforge: Panchovix/stable-diffusion-webui-reForge  main     3b56b268 (2026-03-11)
#       classic: Haoming02/sd-webui-forge-classic           classic  1f95d717 (2025-02-21)
#   - TARGET/venv: Python 3.11 with torch==2.13.0 CPU (a constraint, so nothing pulls a CUDA torch), the host's own
#     requirements file with these changes (written to TARGET/requirements-harness.txt; no host file changes):
#       setuptools pin -> 80.9.0 (torch 2.13 needs >= 77.0.3; < 81 still ships pkg_resources);
#       reForge's pydantic wheel from a GitHub release (unreachable here) -> pydantic==1.10.15 from PyPI;
#       joblib added (soft-inpainting imports it); openai CLIP from the local mirror (launch_utils installs it).
#     torchvision is the shared pure-Python stand-in (STUB_FROM, default ../shared/hosts-build/forge): PyPI's wheel
#     does not import beside the CPU torch.
#   - models/Stable-diffusion/random-sdxl-320.safetensors: a symlink to the random-weight SDXL checkpoint that the
#     shared Forge harness writes (CKPT_FROM); the build checks that the host's own model detection calls it SDXL.
#   - TARGET/launch_harness.py (ours): runs webui/launch.py unchanged after changing two setting defaults
#     (live previews off: they would download an approx-VAE; the random SDXL as the default model), and
#     TARGET/run_$HOST.sh (API only, 127.0.0.1:${PORT:-7884}) / run_${HOST}_ui.sh (UI + API, :${PORT:-7885}).
#   Substitution: reForge pins repositories/stable-diffusion-stability-ai to joypaul162's fork at f16630a9, which
#   cannot be mirrored here; Stability-AI/stablediffusion cf1d67a6 (A1111 1.10's and Classic's pin) is used instead.
#   The `ldm` package is only imported for config classes on these hosts; the UNet runs from ldm_patched.
#   No host file is patched.
# Timings on the shared 2-core machine (2026-12-01, both built at once while other agents ran): fresh build
#   reforge 4 min 51 s (pip 286 s), classic 2 min 54 s (pip 167 s); the one-time SDXL detection check ~10 s;
#   an idempotent re-run 3 s. API server: answers after ~10 s (it loads the model at start); a 4-step 64x64
#   SDXL txt2img job 3-10 s; test_forge_family.py (27 checks) 5-6 min per host.
# Logs: the caller redirects (e.g. > /work/hosts/$HOST.log 2>&1).
set -euo pipefail

HOST=${HOST:?set HOST=reforge or HOST=classic}
MIRROR=${MIRROR:?set MIRROR to the folder holding the bare git mirrors (MIRROR/OWNER+NAME/repo)}
T=$(realpath -m "${TARGET:-${1:-/work/hosts/$HOST}}")
PYTHON=${PYTHON:-python3.11}
STUB_FROM=${STUB_FROM:-/work/shared/hosts-build/forge}
CKPT_FROM=${CKPT_FROM:-/work/hosts/forge/webui/models/Stable-diffusion/random-sdxl-320.safetensors}
CKPT_NAME=random-sdxl-320.safetensors
TORCH_VERSION=2.13.0
SETUPTOOLS_VERSION=80.9.0
SD_COMMIT=cf1d67a6fd5ea1aa600c4df58e5b47da45f6bdbf       # Stability-AI/stablediffusion
SGM_COMMIT=45c443b316737a4ab6e40413d7794a7f5657c19f      # Stability-AI/generative-models
ASSETS_COMMIT=6f7db241d2f8ba7457bac5ca9753331f0c266917   # AUTOMATIC1111/stable-diffusion-webui-assets
KD_COMMIT=ab527a9a6d347f364e3d185ba6d714e22d80cb3c       # crowsonkb/k-diffusion (reForge only)
BLIP_COMMIT=48211a1594f1321b00f14c9f7a5b4813144b2fb9     # salesforce/BLIP (reForge only)
CLIP_COMMIT=d50d76daa670286dd6cacf3bcd80b5e4823fc8e1     # openai/CLIP (launch_utils CLIP_PACKAGE on both)
case "$HOST" in
  reforge) REPO=Panchovix/stable-diffusion-webui-reForge; COMMIT=${HOST_COMMIT:-3b56b268ad9158ee8b30900973b6ccda4ec22241}
           REQS=requirements_versions.txt; DEFAULT_PORT=7884
           HOST_FLAGS="--skip-torch-cuda-test --always-cpu --no-download-sd-model --do-not-download-clip" ;;
  classic) REPO=Haoming02/sd-webui-forge-classic; COMMIT=${HOST_COMMIT:-1f95d7170189cf93952aca122c1ee2f306a07e4c}
           REQS=requirements.txt; DEFAULT_PORT=7886
           HOST_FLAGS="--skip-torch-cuda-test --always-cpu --no-download-sd-model" ;;
  *) echo "HOST must be reforge or classic" >&2; exit 2 ;;
esac

start=$(date +%s)
say() { printf '[%s-build %4ds] %s\n' "$HOST" $(( $(date +%s) - start )) "$*"; }
mirror() {  # owner/name -> bare git dir of its mirror
  local d="$MIRROR/${1/\//+}/repo"
  [ -d "$d" ] || { echo "missing mirror $d: mirror github:$1 first" >&2; exit 1; }
  echo "$d"
}
checkout_at() {  # OWNER/NAME DIR COMMIT: DIR's work tree at COMMIT (detached); blobs the snapshot lacks left out
  local src dir=$2 commit=$3 gone fresh=
  src=$(mirror "$1")
  git --git-dir="$src" cat-file -e "$commit^{commit}" 2>/dev/null || { echo "mirror of $1 lacks $commit" >&2; exit 1; }
  [ -d "$dir/.git" ] || { mkdir -p "$(dirname "$dir")"; git clone -q --no-checkout "$src" "$dir"; fresh=1; }
  git -C "$dir" cat-file -e "$commit^{commit}" 2>/dev/null || git -C "$dir" fetch -q "$src" '+refs/heads/*:refs/remotes/mirror/*'
  if [ -n "$fresh" ] || [ "$(git -C "$dir" rev-parse -q --verify HEAD 2>/dev/null || true)" != "$commit" ]; then
    gone=$(git -C "$dir" ls-tree -r "$commit" | awk '$2 == "blob" {print $3}' | git -C "$dir" cat-file --batch-check |
      awk '$2 == "missing" {print $1}')
    if [ -n "$gone" ]; then
      local files; files=$(git -C "$dir" ls-tree -r "$commit" | grep -F -f <(printf '%s\n' "$gone") | cut -f2)
      say "$(basename "$dir"): not in the mirror snapshot, left out: $(echo $files)"
      git -C "$dir" config core.sparseCheckout true
      git -C "$dir" config core.sparseCheckoutCone false
      mkdir -p "$dir/.git/info"
      { echo '/*'; printf '!/%s\n' $files; } > "$dir/.git/info/sparse-checkout"
    fi
    git -C "$dir" -c advice.detachedHead=false checkout -q -f "$commit" 2> >(grep -v "^error: invalid object" >&2)
  fi
  say "$(basename "$dir") at $(git -C "$dir" rev-parse --short=8 HEAD)"
}

mkdir -p "$T"
W=$T/webui
# 1. sources
checkout_at "$REPO" "$W" "$COMMIT"
checkout_at AUTOMATIC1111/stable-diffusion-webui-assets "$W/repositories/stable-diffusion-webui-assets" "$ASSETS_COMMIT"
checkout_at Stability-AI/stablediffusion "$W/repositories/stable-diffusion-stability-ai" "$SD_COMMIT"
checkout_at Stability-AI/generative-models "$W/repositories/generative-models" "$SGM_COMMIT"
if [ "$HOST" = reforge ]; then
  checkout_at crowsonkb/k-diffusion "$W/repositories/k-diffusion" "$KD_COMMIT"
  checkout_at salesforce/BLIP "$W/repositories/BLIP" "$BLIP_COMMIT"
fi

# 2. venv
VPY=$T/venv/bin/python
quiet() { "$@" 2> >(grep -v "^WARNING: Location 'file:" >&2); }   # this machine's pip.conf lists sparse local indexes
if [ ! -x "$VPY" ]; then
  say "venv with $PYTHON"
  "$PYTHON" -m venv "$T/venv"
fi
"$VPY" "$STUB_FROM/install_torchvision_stub.py"   # first: pip must see 'torchvision' as met
printf '%s\n' "torch==$TORCH_VERSION" "torchvision==0.28.0+stub" "setuptools==$SETUPTOOLS_VERSION" > "$T/constraints.txt"
{
  sed -E -e 's/^setuptools==.*/setuptools=='"$SETUPTOOLS_VERSION"'/' -e '/^torch\s*$/d' \
    -e 's#^https://github.com/Panchovix/pydantic-fixreforge/.*#pydantic==1.10.15  \# harness: PyPI instead of a GitHub wheel#' \
    "$W/$REQS"
  echo
  echo "joblib  # harness: soft-inpainting imports it"
} > "$T/requirements-harness.txt"
stamp=$(cat "$T/constraints.txt" "$T/requirements-harness.txt" | sha256sum | cut -c1-16)
if [ "$(cat "$T/venv/.harness-reqs" 2>/dev/null || true)" != "$stamp" ]; then
  say "pip: torch $TORCH_VERSION + $HOST requirements"
  quiet "$VPY" -m pip install -q "torch==$TORCH_VERSION" "setuptools==$SETUPTOOLS_VERSION" wheel -c "$T/constraints.txt"
  quiet "$VPY" -m pip install -q -r "$T/requirements-harness.txt" -c "$T/constraints.txt"
  checkout_at openai/CLIP "$T/src/CLIP" "$CLIP_COMMIT"
  quiet "$VPY" -m pip install -q --no-deps --no-build-isolation "$T/src/CLIP"
  "$VPY" -m pip check || true
  echo "$stamp" > "$T/venv/.harness-reqs"
fi
"$VPY" - <<'EOF'
import importlib.metadata as md
import torch, torchvision, gradio, fastapi, pydantic, PIL
assert torch.__version__.startswith("2.13.0") and "+cpu" in torch.__version__, torch.__version__
assert torchvision.__version__.endswith("+stub"), torchvision.__version__
cuda = sorted(d.metadata["Name"] for d in md.distributions() if d.metadata["Name"].lower().startswith(("nvidia-", "triton")))
assert not cuda, f"CUDA packages in the venv: {cuda}"
print(f"venv: torch {torch.__version__}, torchvision {torchvision.__version__}, gradio {gradio.__version__}, "
      f"fastapi {fastapi.__version__}, pydantic {pydantic.__version__}, Pillow {PIL.__version__}")
EOF

# 3. the random SDXL checkpoint (symlink) and a check that this host's detector calls it SDXL
CKPT=$W/models/Stable-diffusion/$CKPT_NAME
[ -s "$CKPT_FROM" ] || { echo "no checkpoint at CKPT_FROM=$CKPT_FROM (build the shared Forge harness first)" >&2; exit 1; }
[ -e "$CKPT" ] || { mkdir -p "$(dirname "$CKPT")"; ln -s "$CKPT_FROM" "$CKPT"; }
if [ ! -e "$T/.sdxl-checked" ]; then
  (cd "$W" && HARNESS_CKPT="$CKPT" "$VPY" - <<'EOF'
import os, sys
sys.path.insert(0, ".")
sys.argv[1:] = ["--always-cpu"]   # the host modules parse the command line at import
import safetensors
from ldm_patched.modules import args_parser
args_parser.args, _ = args_parser.parser.parse_known_args(["--always-cpu"])   # as the host's --always-cpu start
from ldm_patched.modules import model_detection
with safetensors.safe_open(os.environ["HARNESS_CKPT"], "pt") as f:   # shapes only: the detector reads .shape of each tensor
    sd = {k: f.get_slice(k) for k in f.keys() if k.startswith("model.diffusion_model.")}
class Shape:
    def __init__(self, s): self.shape = tuple(s.get_shape())
sd = {k: Shape(v) for k, v in sd.items()}
import inspect, torch
extra = {"dtype": torch.float16} if "dtype" in inspect.signature(model_detection.model_config_from_unet).parameters else {}
config = model_detection.model_config_from_unet(sd, "model.diffusion_model.", **extra)   # Classic: dtype positional
name = type(config).__name__
print("model detection:", name)
assert name == "SDXL", name
EOF
  )
  touch "$T/.sdxl-checked"
fi

# 4. launcher (ours) and start scripts
cat > "$T/launch_harness.py" <<'EOF'
"""Harness launcher (written by ASAG's tests/realhost/build/ldm_patched_host.sh): runs webui/launch.py exactly as
`python launch.py ARGS` would, after changing two setting defaults (only where the --ui-settings-file does not
set them; no host file is changed): live_previews_enable=False (previews would download an approx-VAE offline)
and sd_model_checkpoint=$HARNESS_CHECKPOINT."""
import os
import runpy
import sys

root = os.path.dirname(os.path.abspath(__file__))
webui = os.path.join(root, "webui")
os.chdir(webui)
sys.path = [webui] + [p for p in sys.path if os.path.abspath(p or os.curdir) != root]
launch = os.path.join(webui, "launch.py")
sys.argv[0] = launch

from modules import options  # noqa: E402

defaults = {"live_previews_enable": False}
if os.environ.get("HARNESS_CHECKPOINT"):
    defaults["sd_model_checkpoint"] = os.environ["HARNESS_CHECKPOINT"]
_init = options.Options.__init__


def _init_with_defaults(self, data_labels, restricted_opts):
    for key, value in defaults.items():
        if key in data_labels:
            data_labels[key].default = value
    _init(self, data_labels, restricted_opts)


options.Options.__init__ = _init_with_defaults
runpy.run_path(launch, run_name="__main__")
EOF
write_run() {  # FILE DEFAULT_PORT MODE_ARGS...
  local f=$1 port=$2; shift 2
  cat > "$f" <<EOF
#!/usr/bin/env bash
# $HOST harness start (ldm_patched_host.sh): CPU only, 127.0.0.1:\${PORT:-$port}, $*; extra arguments pass through.
H=\$(cd "\$(dirname "\${BASH_SOURCE[0]}")" && pwd)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 DO_NOT_TRACK=1 GRADIO_ANALYTICS_ENABLED=False
export PYTHONUNBUFFERED=1 CUDA_VISIBLE_DEVICES="" HARNESS_CHECKPOINT="\${HARNESS_CHECKPOINT:-$CKPT_NAME}"
cd "\$H/webui"
exec "\$H/venv/bin/python" "\$H/launch_harness.py" $* --server-name 127.0.0.1 --port "\${PORT:-$port}" \\
  --skip-prepare-environment --skip-install --skip-version-check --skip-python-version-check $HOST_FLAGS "\$@"
EOF
  chmod +x "$f"
}
write_run "$T/run_$HOST.sh" "$DEFAULT_PORT" --nowebui --api
write_run "$T/run_${HOST}_ui.sh" "$((DEFAULT_PORT + 1))" --api
say "done: $T ($HOST $(git -C "$W" rev-parse --short=8 HEAD)); start with PORT=$DEFAULT_PORT $T/run_$HOST.sh"
