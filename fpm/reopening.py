"""The master's USR1: every log file reopened where it is, and the workers given the new
access logs without a restart."""
from __future__ import annotations

import os

from fpm import channel, poollogs


class Reopening:
    """Part of fpm.master.Master: USR1."""

    def handle_usr1(self) -> None:
        """Reopen the error log (only the master writes it), the access logs and the slowlogs
        onto their fd numbers, then hand the new access logs to the workers (fpm.channel),
        which take them before their next line: no worker restarts and no line is lost
        (PHP-FPM restarts every worker)."""
        if self.log.is_file:
            try:
                self.log.reopen()
                os.dup2(self.log.fd, 2)  # stderr was pointed at the old file at launch
                self.log.notice("error log file re-opened")
            except OSError as e:
                self.log.syserror("unable to reopen the error log file '%s'" % self.log.target, e)
        held = {"access_log": self.access_fds, "slowlog": self.slowlog_fds}
        for field, words in poollogs.FILES:
            for name, fd in held[field].items():
                path = getattr(self.pools[name], field)
                try:
                    poollogs.reopen(path, fd)
                except OSError as e:
                    self.log.syserror("[pool %s] unable to reopen %s '%s'" % (name, words, path), e)
        if self.access_fds:
            self.log.notice("access log file re-opened")
        for child in self.children.by_pid.values():
            if child.channel >= 0 and child.pool.name in self.access_fds:
                try:
                    channel.send_files(child.channel, [self.access_fds[child.pool.name]])
                except OSError as e:
                    self.log.syserror("[pool %s] child %d: unable to hand over the reopened "
                                      "log files" % (child.pool.name, child.pid), e)
        for board in list(self.boards.values()) + self.old_boards:
            board.mem.bump_log_generation()
