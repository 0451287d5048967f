"""Speed-ups of pask-apply, and only that: each can be deleted (or its file removed) and
every run still gives the same result, the long way.

* config_cache: validated configs kept between runs (an unchanged or slightly edited
  big file is not parsed again);
* kernel_digest: one digest of everything a plan is made from, read the cheap way;
* noop: a re-run whose inputs and kernel digest match the last verified run answers
  "no changes" without loading, expanding or diffing anything.
"""
