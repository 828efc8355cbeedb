divert(-1)dnl
dnl directmilter for Sendmail (8.14 or later): include in sendmail.mc after MAILER(`smtp'), e.g.
dnl
dnl     define(`DIRECTMILTER_SOCKET', `local:/run/directmilter/directmilter.sock')dnl    (the default)
dnl     define(`DIRECTMILTER_REINJECT_PORT', `10027')dnl                                 (the default)
dnl     include(`/usr/share/doc/directmilter/examples/sendmail/directmilter.m4')dnl
dnl
dnl then rebuild sendmail.cf (sendmailconfig, or m4 ... > sendmail.cf) and restart sendmail. Your mc must name its
dnl own listeners with DAEMON_OPTIONS (Sendmail drops its default listener once any DAEMON_OPTIONS is given, and
dnl this file adds one): Name=MTA for mail from other HISPs, Name=MSA for submission, which directmilter.conf names
dnl in [milter] submission_daemons = ["MSA"].
dnl
dnl What this file sets up, and why:
dnl - The milter, with F=T: if directmilter is down or does not answer, mail is deferred (4.x.x). Sendmail's default
dnl   (no F= flag) goes on without the milter, that is, it passes mail in clear. The timeouts leave room for
dnl   certificate discovery and revocation lookups at end of message (Sendmail's defaults: 10 s reads, 5 min end).
dnl - The re-injection listener on 127.0.0.1 (directmilter.conf: [notify] reinject = "127.0.0.1:10027"), where
dnl   directmilter queues its secured MDNs and DSNs. The milter runs here too and, under this daemon name, takes only
dnl   what directmilter itself sealed.
dnl - The commit witness ([notify] commit_witness = true): the recipient commit+<token>@directmilter.invalid that
dnl   directmilter adds at end of message is delivered to the re-injection listener, where its arrival tells
dnl   directmilter that Sendmail kept the message (only then do its MDNs go).
ifdef(`DIRECTMILTER_SOCKET',, `define(`DIRECTMILTER_SOCKET', `local:/run/directmilter/directmilter.sock')')
ifdef(`DIRECTMILTER_REINJECT_PORT',, `define(`DIRECTMILTER_REINJECT_PORT', `10027')')
ifdef(`DIRECTMILTER_TIMEOUTS',, `define(`DIRECTMILTER_TIMEOUTS', `C:30s;S:60s;R:120s;E:10m')')
divert(0)dnl
INPUT_MAIL_FILTER(`directmilter', `S='DIRECTMILTER_SOCKET`, F=T, T='DIRECTMILTER_TIMEOUTS)dnl
DAEMON_OPTIONS(`Port='DIRECTMILTER_REINJECT_PORT`, Addr=127.0.0.1, Name=DIRECTMILTER-REINJECT, M=E')dnl
MAILER_DEFINITIONS
Mdmwitness,	P=[IPC], F=mDFMuXa8k, S=EnvFromSMTP/HdrFromSMTP, R=EnvToSMTP, E=\r\n, L=2040, T=DNS/RFC822/SMTP,
		A=TCP $h DIRECTMILTER_REINJECT_PORT
LOCAL_RULE_0
R$* < @ directmilter.invalid . > $*	$#dmwitness $@ [127.0.0.1] $: $1 < @ directmilter.invalid . > $2
R$* < @ directmilter.invalid > $*	$#dmwitness $@ [127.0.0.1] $: $1 < @ directmilter.invalid > $2
