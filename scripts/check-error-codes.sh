#!/usr/bin/env bash
# check-error-codes.sh — every stable error code the code can emit has an entry in docs/runbooks/troubleshooting.md.
#
# The codes are extracted FROM THE SOURCE (crates/*/src/**/*.rs, outside `#[cfg(test)]` modules and comments), never
# from a hand-kept list. The shapes recognised are the ones the code base uses to name a code:
#
#   fn_code      string literals in the body of `fn code(&self)` / `fn reason(&self)` (Classified impls, Rejection)
#   code_field   `code: "x"` / `code = "x"` (UpstreamError/StoreError/AppError/Outcome fields, tracing `code = ...`)
#   ineligible   `ineligible("x", …)` (JobError::ineligible, possibly with the literal on the next line)
#   class_arg    `"x", ErrorClass::…` (StoreError::new and similar constructors taking code + class)
#   job_state    `JobState::…, Some("x"…)` (the queue's finalize tuples: state + last_error_code)
#   mark_failed  `mark_failed(conn, pubkey, "x", …)` (an account's provisioning_error)
#   error_code   `last_error_code.eq("x")`, `error_code = Some("x"…)`, SQL `last_error_code = 'x'` and
#                `last_error_code = CASE … THEN 'x' ELSE 'y' END`
#
# A `fn code` whose result is neither a literal nor a delegation (`e.code()`, `self.code`, `self.reason()`, a `code`
# binding) — e.g. a const — fails the check as unextractable, so no code can hide from it.
#
# Each code must have a heading in the doc that names it in backticks, e.g. `### \`plc_rejected\``. Entries for codes
# the source no longer emits are reported as notes.
#
# Labels — metric `reason` values that accompany a code rather than being one (gateway 401 reasons
# `unauthorized("x", …)` / `reason: "x"`, `/ready` JSON `"reason": "x"`) — must be mentioned in backticks anywhere in
# the doc.
#
# Usage: scripts/check-error-codes.sh [--list] [--doc FILE] [EXTRA.rs ...]
#   --list     print every code/label with the place it was found, then check as usual
#   --doc F    check against F instead of docs/runbooks/troubleshooting.md
#   EXTRA.rs   additional source files to scan (used to prove the check fails on a new, undocumented code)
# Environment: ROOT (tree to scan, default this checkout), MIN_CODES (default 30: fewer extracted codes means the
# extractor broke, which fails the check).
set -euo pipefail
ROOT="${ROOT:-$(cd "$(dirname "$0")/.." && pwd)}"
export LOG_TAG=error-codes
# shellcheck source=lib/common.sh source-path=SCRIPTDIR
source "$(dirname "$0")/lib/common.sh"

list=0
doc="$ROOT/docs/runbooks/troubleshooting.md"
extra=()
while (($#)); do
  case "$1" in
    --list) list=1 ;;
    --doc)
      doc=$2
      shift
      ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d'
      exit 0
      ;;
    *) extra+=("$1") ;;
  esac
  shift
done
MIN_CODES="${MIN_CODES:-30}"
need_cmd perl perl
[[ -f "$doc" ]] || die "no runbook at $doc"

mapfile -t files < <(find "$ROOT/crates" -path '*/src/*' -name '*.rs' -not -path '*/target/*' | sort)
files+=("${extra[@]}")
((${#files[@]} > 0)) || die "no Rust sources under $ROOT/crates"

# Prints `<tier>\t<code>\t<file>:<line>\t<shape>` for every code found.
extract() {
  perl -e '
    use strict; use warnings;
    my $root = shift @ARGV;
    my $CODE = qr/[a-z][a-z0-9]*(?:_[a-z0-9]+)*/;
    for my $file (@ARGV) {
      open(my $fh, "<", $file) or die "cannot read $file: $!";
      local $/; my $src = <$fh>; close $fh;
      # Blank out comment lines (doc comments quote the shapes) but keep line numbers.
      $src =~ s{^([ \t]*//[^\n]*)}{" " x length($1)}gme;
      # Blank out #[cfg(test)] items (test modules construct fake codes), brace-matched.
      while ($src =~ /#\[cfg\(test\)\]/g) {
        my $start = $-[0];
        my $open = index($src, "{", $start);
        last if $open < 0;
        my ($depth, $i) = (0, $open);
        for (; $i < length $src; $i++) {
          my $c = substr($src, $i, 1);
          $depth++ if $c eq "{";
          if ($c eq "}") { $depth--; last if $depth == 0; }
        }
        my $chunk = substr($src, $start, $i - $start + 1);
        (my $blank = $chunk) =~ s/[^\n]/ /g;
        substr($src, $start, length $chunk) = $blank;
        pos($src) = $start + length $chunk;
      }
      (my $rel = $file) =~ s{^\Q$root\E/}{};
      my $line_of = sub { my $off = shift; 1 + (substr($src, 0, $off) =~ tr/\n//) };
      my $emit = sub { my ($tier, $code, $off, $shape) = @_; print "$tier\t$code\t$rel:" . $line_of->($off) . "\t$shape\n"; };

      # fn_code: bodies of fn code(&self) / fn reason(&self), brace-matched.
      while ($src =~ /\bfn\s+(code|reason)\s*\(\s*&?\s*(?:mut\s+)?self\s*\)[^{;]*\{/g) {
        my ($fn, $open) = ($1, $+[0] - 1);
        my ($depth, $i) = (0, $open);
        for (; $i < length $src; $i++) {
          my $c = substr($src, $i, 1);
          $depth++ if $c eq "{";
          if ($c eq "}") { $depth--; last if $depth == 0; }
        }
        my $body = substr($src, $open, $i - $open + 1);
        while ($body =~ /"($CODE)"/g) { $emit->("code", $1, $open + $-[0], "fn_code"); }
        # Every result (the right-hand side of each match arm, or the whole body) must be a literal or a delegation
        # (`e.code()`, `self.code`, `self.reason()`, a `code` binding); anything else (a const, a format!) would hide
        # codes from this check, so it is reported as unextractable.
        my $inner = substr($body, 1, length($body) - 2);
        my @results = $inner =~ /=>/ ? ($inner =~ /=>\s*([^,\n]+?)\s*(?:,|\n|\}|$)/g) : ($inner);
        for my $r (@results) {
          $r =~ s/^\s+|\s+$//g;
          next if $r =~ /^(?:"$CODE"|\w+\.code(?:\(\))?|self\.reason\(\)|\*?code)$/;
          $emit->("unextractable", "fn $fn returning `$r`", $open, "fn_code");
        }
      }
      while ($src =~ /(?<![\w.])code\s*[:=]\s*"($CODE)"/g)                { $emit->("code", $1, $-[0], "code_field"); }
      while ($src =~ /\bineligible\s*\(\s*"($CODE)"/g)                    { $emit->("code", $1, $-[0], "ineligible"); }
      while ($src =~ /"($CODE)"\s*,\s*ErrorClass::/g)                     { $emit->("code", $1, $-[0], "class_arg"); }
      while ($src =~ /\bmark_failed\s*\([^,()]*,[^,()]*,\s*"($CODE)"/g)  { $emit->("code", $1, $-[0], "mark_failed"); }
      while ($src =~ /JobState::\w+\s*,\s*Some\(\s*"($CODE)"/g)           { $emit->("code", $1, $-[0], "job_state"); }
      while ($src =~ /error_code\s*\.eq\(\s*"($CODE)"/g)                 { $emit->("code", $1, $-[0], "error_code"); }
      while ($src =~ /error_code\s*=\s*Some\(\s*"($CODE)"/g)             { $emit->("code", $1, $-[0], "error_code"); }
      while ($src =~ /error_code\s*=\s*(?:\x27($CODE)\x27|CASE\b(.*?)\bEND\b)/gs) {
        my ($one, $case, $off) = ($1, $2, $-[0]);
        if (defined $one) { $emit->("code", $one, $off, "error_code"); next; }
        while ($case =~ /\x27($CODE)\x27/g) { $emit->("code", $1, $off, "error_code"); }
      }
      # Labels.
      while ($src =~ /\bunauthorized\s*\(\s*"($CODE)"/g)                  { $emit->("label", $1, $-[0], "auth_reason"); }
      while ($src =~ /(?<![\w.])reason\s*:\s*"($CODE)"/g)                  { $emit->("label", $1, $-[0], "auth_reason"); }
      while ($src =~ /"reason"\s*:\s*"($CODE)"/g)                          { $emit->("label", $1, $-[0], "ready_reason"); }
    }
  ' "$ROOT" "$@"
}

raw=$(extract "${files[@]}")
mapfile -t codes < <(awk -F'\t' '$1 == "code" {print $2}' <<< "$raw" | sort -u)
# A label that is also a code is checked as a code.
mapfile -t labels < <(comm -23 <(awk -F'\t' '$1 == "label" {print $2}' <<< "$raw" | sort -u) \
  <(printf '%s\n' "${codes[@]}"))

if ((list)); then
  sort -t$'\t' -k1,1 -k2,2 <<< "$raw" | awk -F'\t' '{printf "%-6s %-32s %-12s %s\n", $1, $2, $4, $3}'
fi

echo "found ${#codes[@]} error codes and ${#labels[@]} reason labels in $(printf '%s\n' "${files[@]}" | wc -l) source files"
headings=$(grep -E '^#{2,4}[[:space:]]' "$doc" || true)
for c in "${codes[@]}"; do
  if grep -qF "\`$c\`" <<< "$headings"; then
    PASSED=$((PASSED + 1))
  else
    where=$(awk -F'\t' -v c="$c" '$1 == "code" && $2 == c {print $3; exit}' <<< "$raw")
    fail "code $c ($where) has no heading in ${doc#"$ROOT"/}"
  fi
done
for l in "${labels[@]}"; do
  if grep -qF "\`$l\`" "$doc"; then
    PASSED=$((PASSED + 1))
  else
    where=$(awk -F'\t' -v c="$l" '$1 == "label" && $2 == c {print $3; exit}' <<< "$raw")
    fail "reason label $l ($where) is not mentioned in ${doc#"$ROOT"/}"
  fi
done
# Entries whose code the source no longer emits: reported, not failed (the code may come back, or be emitted by a
# shape this extractor does not know yet — then teach it the shape).
# shellcheck disable=SC2016 # the backticks are literal Markdown
mapfile -t documented < <(grep -oE '^#{3,4} `[a-z][a-z0-9_]*`$' "$doc" | grep -oE '[a-z][a-z0-9_]*' | sort -u)
for d in $(comm -23 <(printf '%s\n' "${documented[@]}") <(printf '%s\n' "${codes[@]}" "${labels[@]}" | sort -u)); do
  echo "  note: ${doc#"$ROOT"/} has an entry for $d, which the source no longer emits"
done
while IFS=$'\t' read -r _ what where _; do
  fail "cannot extract the codes of $what at $where: return string literals or delegate to another code()"
done < <(awk -F'\t' '$1 == "unextractable"' <<< "$raw")
if ((${#codes[@]} < MIN_CODES)); then
  fail "only ${#codes[@]} codes extracted (expected at least $MIN_CODES): the extractor no longer matches the code's shapes"
fi
summary
