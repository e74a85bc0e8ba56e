"""The process runtime: agents as child processes, supervised, with a hostcall channel."""
