# shellcheck shell=bash
# What scripts/test-pythons and scripts/build-wheels share; sourced from the checkout's root.

# The Pythons pyfpm is tested on and built for beyond the host's (Debian 12's 3.11): each
# chroot suite and its Python.
# shellcheck disable=SC2034  # used by the scripts that source this file
declare -A SUITE_PYTHON=([noble]=3.12 [trixie]=3.13 [sid]=3.14)

copy_checkout() {  # the files of checkout $1 into $2: tracked and new, not ignored
    if git -C "$1" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        # A tracked file deleted in the work tree is left out, with tar's warning.
        git -C "$1" ls-files -z --cached --others --exclude-standard \
            | (cd "$1" && tar --ignore-failed-read --null -T - -cf -) | tar -xf - -C "$2"
    else  # an unpacked sdist, or scripts/test-pythons' copy: leave out what a build made
        tar -C "$1" --exclude=./.venv --exclude=./build --exclude=./dist \
            --exclude='*.egg-info' --exclude=__pycache__ --exclude='*.so' -cf - . \
            | tar -xf - -C "$2"
    fi
}
