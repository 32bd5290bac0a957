#!/usr/bin/env bash
# Add mamba_ssm's Mamba2 block (mamba_ssm/modules/mamba2.py) and what it imports beyond the Triton
# ops to a peer site built by shared/anchors/make_peer_site.sh, for benchmarks/train_throughput.py.
# Usage: extend_peer_site.sh MAMBA_GIT_DIR SITE
#   MAMBA_GIT_DIR: a bare git directory of state-spaces/mamba; SITE: the folder holding mamba_ssm/.
# Files are read from the mirror with `git show` into SITE only (never into seqzoo's tree).
# mamba2.py also imports einops and huggingface_hub, which the GPU image has.
set -euo pipefail
git_dir=$1; site=$2
test -d "$site/mamba_ssm/ops/triton" || { echo "$site has no mamba_ssm/ops/triton: run make_peer_site.sh first" >&2; exit 1; }
mkdir -p "$site/mamba_ssm/modules" "$site/mamba_ssm/distributed"
for f in mamba_ssm/modules/__init__.py mamba_ssm/modules/mamba2.py \
         mamba_ssm/distributed/__init__.py mamba_ssm/distributed/tensor_parallel.py \
         mamba_ssm/distributed/distributed_utils.py; do
  git --git-dir="$git_dir" show "HEAD:$f" > "$site/$f"
done
echo "mamba_ssm.modules.mamba2 added to $site (mamba $(git --git-dir="$git_dir" rev-parse --short HEAD))"
