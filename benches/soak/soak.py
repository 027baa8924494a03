#!/usr/bin/env python3
"""Mixed, bounded SIP load for two sipblade blades (soak audit).

Agents (UDP and TCP) register on blade-1 (auth = true) and blade-2
(auth = false) and call each other: answered calls, 486, CANCEL after 180,
CANCEL racing a 200, callees that never answer (408 after 32 s), calls to
agents in a call, to unknown and unregistered extensions; re-REGISTERs,
unanswered REGISTER challenges from many source ports, agents moving
between blades, TCP connections closed mid-message.

  soak.py B1_SIP B2_SIP FIRST_EXT N_AGENTS RATE SECONDS
Stops by itself; prints a summary as JSON.
"""
import hashlib
import json
import random
import selectors
import socket
import sys
import time

B1 = sys.argv[1].split(":"); B1 = (B1[0], int(B1[1]))
B2 = sys.argv[2].split(":"); B2 = (B2[0], int(B2[1]))
FIRST = int(sys.argv[3])
N = int(sys.argv[4])
RATE = float(sys.argv[5])
SECS = float(sys.argv[6])
DOMAIN = "cc.example"
SEED = int(sys.argv[7]) if len(sys.argv) > 7 else 1
random.seed(SEED)

sel = selectors.DefaultSelector()
stats = {}
def count(k, n=1):
    stats[k] = stats.get(k, 0) + n

seq = [0]
def uniq():
    seq[0] += 1
    return f"{SEED}x{seq[0]}"

def md5(s):
    return hashlib.md5(s.encode()).hexdigest()

def parse(data):
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode(errors="replace").split("\r\n")
    start = lines[0]
    hdrs = []
    for l in lines[1:]:
        if ":" in l:
            k, v = l.split(":", 1)
            hdrs.append((k.strip().lower(), v.strip()))
    return start, hdrs, body

def hget(hdrs, name):
    for k, v in hdrs:
        if k == name:
            return v
    return None

def hall(hdrs, name):
    out = []
    for k, v in hdrs:
        if k == name:
            out += [x.strip() for x in split_commas(v)]
    return out

def split_commas(v):
    out, cur, depth, q = [], "", 0, False
    for ch in v:
        if ch == '"':
            q = not q
        if ch == "<" and not q:
            depth += 1
        if ch == ">" and not q:
            depth -= 1
        if ch == "," and depth == 0 and not q:
            out.append(cur); cur = ""
        else:
            cur += ch
    if cur:
        out.append(cur)
    return out

def tag_of(v):
    for p in v.split(";")[1:]:
        if p.strip().startswith("tag="):
            return p.strip()[4:]
    return None

def uri_of(v):
    if "<" in v:
        return v[v.index("<") + 1:v.index(">")]
    return v.split(";")[0]

def hostport(uri):
    u = uri.split(":", 1)[1]
    if "@" in u:
        u = u.split("@", 1)[1]
    u = u.split(";")[0].split(">")[0]
    h, _, p = u.partition(":")
    return (h, int(p or 5060))

def digest(hdr_value, user, pw, method, uri):
    params = {}
    for part in split_commas(hdr_value[len("Digest "):]):
        k, _, v = part.strip().partition("=")
        params[k.strip()] = v.strip().strip('"')
    realm, nonce = params["realm"], params["nonce"]
    cnonce = uniq()
    ha1 = md5(f"{user}:{realm}:{pw}")
    ha2 = md5(f"{method}:{uri}")
    resp = md5(f"{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}")
    return (f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
            f'response="{resp}", algorithm=MD5, cnonce="{cnonce}", qop=auth, nc=00000001')


class Agent:
    def __init__(self, ext, ip, blade, tcp, auth):
        self.ext, self.ip, self.blade, self.tcp, self.auth = ext, ip, blade, tcp, auth
        self.pw = f"pw-{ext}"
        self.busy = False  # in a call the driver placed (caller or callee)
        self.registered = False
        self.reg_call = f"reg-{ext}-{uniq()}"
        self.reg_cseq = 0
        self.reg_due = 0.0
        self.calls = {}  # call-id -> Call (either side)
        self.buf = b""
        self.open()

    def open(self):
        if self.tcp:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((self.ip, 0))
            s.connect(self.blade)
            s.setblocking(False)
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((self.ip, 0))
            s.setblocking(False)
        self.sock = s
        self.port = s.getsockname()[1]
        self.buf = b""
        sel.register(s, selectors.EVENT_READ, self)

    def close(self):
        sel.unregister(self.sock)
        self.sock.close()

    @property
    def transport(self):
        return "TCP" if self.tcp else "UDP"

    def via(self, branch):
        return f"Via: SIP/2.0/{self.transport} {self.ip}:{self.port};branch=z9hG4bK{branch};rport"

    def contact(self):
        t = ";transport=tcp" if self.tcp else ""
        return f"<sip:{self.ext}@{self.ip}:{self.port}{t}>"

    def send(self, text, to=None):
        data = text.encode()
        try:
            if self.tcp:
                self.sock.sendall(data)
            else:
                self.sock.sendto(data, to or self.blade)
        except OSError as e:
            count("send_error")

    def register(self, expires=60, auth_line=None):
        self.reg_cseq += 1
        extra = f"Authorization: {auth_line}\r\n" if auth_line else ""
        self.send(
            f"REGISTER sip:{DOMAIN} SIP/2.0\r\n{self.via(uniq())}\r\nMax-Forwards: 70\r\n"
            f"From: <sip:{self.ext}@{DOMAIN}>;tag=r{self.ext}\r\nTo: <sip:{self.ext}@{DOMAIN}>\r\n"
            f"Call-ID: {self.reg_call}\r\nCSeq: {self.reg_cseq} REGISTER\r\nContact: {self.contact()}\r\n"
            f"Expires: {expires}\r\n{extra}Content-Length: 0\r\n\r\n")
        self.reg_due = time.monotonic() + 20 + random.random() * 10

    def readable(self):
        try:
            if self.tcp:
                data = self.sock.recv(65536)
                if not data:
                    count("tcp_closed_by_blade")
                    self.close()
                    self.open()
                    self.register()
                    return
                self.buf += data
                while True:
                    self.buf = self.buf.lstrip(b"\r\n")
                    i = self.buf.find(b"\r\n\r\n")
                    if i < 0:
                        return
                    _, hdrs, _ = parse(self.buf[:i + 4])
                    cl = int(hget(hdrs, "content-length") or hget(hdrs, "l") or 0)
                    if len(self.buf) < i + 4 + cl:
                        return
                    msg, self.buf = self.buf[:i + 4 + cl], self.buf[i + 4 + cl:]
                    self.handle(msg, None)
            else:
                while True:
                    try:
                        data, src = self.sock.recvfrom(65536)
                    except BlockingIOError:
                        return
                    self.handle(data, src)
        except ConnectionError:
            count("tcp_reset")
            self.close()
            self.open()
            self.register()

    def handle(self, data, src):
        start, hdrs, body = parse(data)
        if start.startswith("SIP/2.0"):
            status = int(start.split()[1])
            cseq = hget(hdrs, "cseq") or ""
            method = cseq.split()[-1] if cseq else ""
            cid = hget(hdrs, "call-id")
            if method == "REGISTER":
                if status == 401:
                    self.register(auth_line=digest(hget(hdrs, "www-authenticate"), self.ext, self.pw,
                                                   "REGISTER", f"sip:{DOMAIN}"))
                elif status == 200:
                    self.registered = True
                    count("reg_ok")
                else:
                    count(f"reg_{status}")
                return
            call = self.calls.get(cid)
            if call:
                call.on_response(self, status, method, hdrs, data)
            return
        method = start.split()[0]
        cid = hget(hdrs, "call-id")
        call = self.calls.get(cid)
        if method == "INVITE" and call is None:
            call = Callee(self, hdrs, data, src)
            self.calls[cid] = call
            return
        if call is None:
            if method not in ("ACK",):
                self.reply(hdrs, 481, "Call/Transaction Does Not Exist", src)
            count(f"stray_{method}")
            return
        call.on_request(self, method, hdrs, data, src)

    def reply(self, hdrs, status, reason, src, to_tag=None, extra=""):
        lines = [f"SIP/2.0 {status} {reason}"]
        for k, v in hdrs:
            if k in ("via", "v"):
                lines.append(f"Via: {v}")
        for k, v in hdrs:
            if k in ("record-route",) and status < 300 and status > 100:
                lines.append(f"Record-Route: {v}")
        frm = hget(hdrs, "from")
        to = hget(hdrs, "to")
        if to_tag and tag_of(to) is None:
            to = f"{to};tag={to_tag}"
        lines += [f"From: {frm}", f"To: {to}", f"Call-ID: {hget(hdrs, 'call-id')}",
                  f"CSeq: {hget(hdrs, 'cseq')}"]
        if extra:
            lines.append(extra)
        lines.append("Content-Length: 0")
        self.send("\r\n".join(lines) + "\r\n\r\n", to=self.response_addr(hdrs, src))

    def response_addr(self, hdrs, src):
        if self.tcp:
            return None
        return src


class Callee:
    """The called agent's side of one call, its behaviour from X-Behave."""
    def __init__(self, agent, hdrs, data, src):
        self.hdrs, self.src = hdrs, src
        self.cid = hget(hdrs, "call-id")
        self.behave = hget(hdrs, "x-behave") or "answer"
        self.tag = "t" + uniq()
        self.done_at = time.monotonic() + 260
        count(f"uas_{self.behave}")
        b = self.behave
        if b == "busy":
            agent.reply(hdrs, 486, "Busy Here", src, self.tag)
        elif b == "silent":
            pass
        else:
            agent.reply(hdrs, 180, "Ringing", src, self.tag, f"Contact: {agent.contact()}")
            if b == "answer":
                later(random.uniform(0.05, 0.5), self.answer, agent)

    def answer(self, agent):
        if self.behave == "answered":
            return
        self.behave = "answered"
        agent.reply(self.hdrs, 200, "OK", self.src, self.tag, f"Contact: {agent.contact()}")

    def on_request(self, agent, method, hdrs, data, src):
        if method == "INVITE":
            return  # retransmission (silent callee over UDP)
        if method == "CANCEL":
            agent.reply(hdrs, 200, "OK", src)
            if self.behave == "race":
                self.answer(agent)
            elif self.behave != "answered":
                agent.reply(self.hdrs, 487, "Request Terminated", src, self.tag)
            return
        if method == "BYE":
            agent.reply(hdrs, 200, "OK", src)
            self.finish(agent)
            return
        if method == "ACK":
            if self.behave in ("busy", "cancel", "ring"):
                self.finish(agent)
            return

    def finish(self, agent):
        agent.calls.pop(self.cid, None)

    def on_response(self, *a):
        pass


class Caller:
    def __init__(self, agent, callee_ext, behave, callee_agent):
        self.a, self.callee_ext, self.behave, self.callee = agent, callee_ext, behave, callee_agent
        self.cid = f"soak-{uniq()}@{agent.ip}"
        self.ftag = "f" + uniq()
        self.cseq = 0
        self.ruri = f"sip:{callee_ext}@{DOMAIN}"
        self.auth = None
        self.started = time.monotonic()
        self.deadline = self.started + (200 if behave == "ring" else 45)
        self.state = "inviting"
        agent.calls[self.cid] = self
        agent.busy = True
        if callee_agent:
            callee_agent.busy = True
        self.invite()

    def invite(self):
        a = self.a
        self.cseq += 1
        self.branch = uniq()
        auth = f"Proxy-Authorization: {self.auth}\r\n" if self.auth else ""
        sdp = "v=0\r\no=- 1 1 IN IP4 127.0.7.9\r\ns=-\r\nc=IN IP4 127.0.7.9\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n"
        self.invite_text = (
            f"INVITE {self.ruri} SIP/2.0\r\n{a.via(self.branch)}\r\nMax-Forwards: 70\r\n"
            f"From: <sip:{a.ext}@{DOMAIN}>;tag={self.ftag}\r\nTo: <sip:{self.callee_ext}@{DOMAIN}>\r\n"
            f"Call-ID: {self.cid}\r\nCSeq: {self.cseq} INVITE\r\nContact: {a.contact()}\r\n"
            f"X-Behave: {self.behave}\r\n{auth}Content-Type: application/sdp\r\n"
            f"Content-Length: {len(sdp)}\r\n\r\n{sdp}")
        a.send(self.invite_text)

    def ack_non2xx(self, hdrs):
        a = self.a
        a.send(f"ACK {self.ruri} SIP/2.0\r\n{a.via(self.branch)}\r\nMax-Forwards: 70\r\n"
               f"From: <sip:{a.ext}@{DOMAIN}>;tag={self.ftag}\r\nTo: {hget(hdrs, 'to')}\r\n"
               f"Call-ID: {self.cid}\r\nCSeq: {self.cseq} ACK\r\nContent-Length: 0\r\n\r\n")

    def in_dialog(self, method, cseq):
        a = self.a
        routes = "".join(f"Route: {r}\r\n" for r in self.routes)
        text = (f"{method} {self.target} SIP/2.0\r\n{a.via(uniq())}\r\nMax-Forwards: 70\r\n"
                f"From: <sip:{a.ext}@{DOMAIN}>;tag={self.ftag}\r\nTo: {self.to}\r\n"
                f"Call-ID: {self.cid}\r\nCSeq: {cseq} {method}\r\n{routes}Content-Length: 0\r\n\r\n")
        if a.tcp:
            a.send(text)
        else:
            dest = hostport(uri_of(self.routes[0])) if self.routes else hostport(self.target)
            a.send(text, to=dest)

    def cancel(self):
        if self.state != "ringing":
            return
        a = self.a
        self.state = "cancelled"
        a.send(f"CANCEL {self.ruri} SIP/2.0\r\n{a.via(self.branch)}\r\nMax-Forwards: 70\r\n"
               f"From: <sip:{a.ext}@{DOMAIN}>;tag={self.ftag}\r\nTo: <sip:{self.callee_ext}@{DOMAIN}>\r\n"
               f"Call-ID: {self.cid}\r\nCSeq: {self.cseq} CANCEL\r\nContent-Length: 0\r\n\r\n")

    def bye(self):
        self.state = "bye"
        self.in_dialog("BYE", self.cseq + 1)

    def on_response(self, a, status, method, hdrs, data):
        if method == "INVITE":
            if status == 407 and self.auth is None and a.auth:
                self.ack_non2xx(hdrs)
                self.auth = digest(hget(hdrs, "proxy-authenticate"), a.ext, a.pw, "INVITE", self.ruri)
                self.invite()
                return
            if status == 180 and self.state == "inviting":
                self.state = "ringing"
                if self.behave == "cancel":
                    later(random.uniform(0.05, 0.4), self.cancel)
                elif self.behave == "race":
                    self.cancel()
                return
            if status < 200:
                return
            if 200 <= status < 300:
                if self.state in ("acked", "bye", "done"):
                    return  # retransmitted 2xx
                rr = hall(hdrs, "record-route")
                self.routes = list(reversed(rr))
                self.target = uri_of(hget(hdrs, "contact") or hget(hdrs, "m"))
                self.to = hget(hdrs, "to")
                self.in_dialog("ACK", self.cseq)
                self.state = "acked"
                count(f"call_{self.behave}_200")
                later(random.uniform(0.2, 2.0), self.bye)
                return
            if self.state == "done":
                return
            self.ack_non2xx(hdrs)
            count(f"call_{self.behave}_{status}")
            self.end()
        elif method == "BYE":
            count(f"bye_{status}")
            self.end()

    def end(self):
        self.state = "done"
        self.a.calls.pop(self.cid, None)
        self.a.busy = False
        if self.callee:
            self.callee.busy = False


timers = []
def later(delay, fn, *args):
    timers.append((time.monotonic() + delay, fn, args))


def main():
    ips = [f"127.0.7.{10 + i}" for i in range(N)]
    agents = []
    for i in range(N):
        ext = str(FIRST + i)
        on_b1 = i % 2 == 0
        tcp = i % 5 == 4
        agents.append(Agent(ext, ips[i], B1 if on_b1 else B2, tcp, auth=on_b1))
    movers = [a for a in agents if not a.tcp][:4]
    for a in agents:
        a.register()
    # Unprovisioned/unregistered targets.
    unregistered = str(FIRST + N + 1)  # provisioned, never registered
    unknown = "99999"
    # Sockets for abandoned REGISTER challenges, from many source ports.
    junk_udp = []
    for i in range(8):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((f"127.0.7.{200 + i}", 0))
        s.setblocking(False)
        junk_udp.append(s)

    t0 = time.monotonic()
    end_at = t0 + SECS
    next_call = t0 + 1.0
    next_junk = t0 + 1.0
    next_move = t0 + 5.0
    next_tcp_junk = t0 + 2.0
    placed = 0
    behaviours = (["answer"] * 50 + ["busy"] * 12 + ["cancel"] * 15 + ["race"] * 6 +
                  ["silent"] * 3 + ["incall"] * 5 + ["unknown"] * 2 + ["unreg"] * 2)
    while True:
        now = time.monotonic()
        active = sum(1 for a in agents for c in a.calls.values() if isinstance(c, Caller))
        if now >= end_at and active == 0:
            break
        if now >= end_at + 260:
            count("gave_up_active", active)
            break
        # Timers.
        due = [t for t in timers if t[0] <= now]
        if due:
            timers[:] = [t for t in timers if t[0] > now]
            for _, fn, args in due:
                fn(*args)
        for a in agents:
            if a.reg_due and now >= a.reg_due and not a.busy:
                a.register()
            for c in list(a.calls.values()):
                if isinstance(c, Caller) and now > c.deadline:
                    count(f"stuck_{c.behave}_{c.state}")
                    c.end()
                elif isinstance(c, Callee) and now > c.done_at:
                    a.calls.pop(c.cid, None)
        if now < end_at:
            while next_call <= now:
                next_call += 1.0 / RATE
                behave = random.choice(behaviours)
                if behave == "ring" and now - t0 > 30:
                    behave = "answer"
                free = [a for a in agents if not a.busy and a.registered]
                if len(free) < 2:
                    count("no_free_agents")
                    continue
                caller = random.choice(free)
                if behave == "unknown":
                    Caller(caller, unknown, behave, None)
                elif behave == "unreg":
                    Caller(caller, unregistered, behave, None)
                elif behave == "incall":
                    inc = [a for a in agents if a.busy and a is not caller and a.calls]
                    if not inc:
                        continue
                    Caller(caller, random.choice(inc).ext, behave, None)
                else:
                    callee = random.choice([a for a in free if a is not caller])
                    Caller(caller, callee.ext, behave, callee)
                placed += 1
            while next_junk <= now:
                next_junk += 1.0 / 20
                s = random.choice(junk_udp)
                ext = str(FIRST + random.randrange(N))
                br = uniq()
                ip, port = s.getsockname()
                msg = (f"REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {ip}:{port};branch=z9hG4bK{br}\r\n"
                       f"Max-Forwards: 70\r\nFrom: <sip:{ext}@{DOMAIN}>;tag=j{br}\r\nTo: <sip:{ext}@{DOMAIN}>\r\n"
                       f"Call-ID: junk-{br}\r\nCSeq: 1 REGISTER\r\nContact: <sip:{ext}@{ip}:{port}>\r\n"
                       f"Content-Length: 0\r\n\r\n")
                try:
                    s.sendto(msg.encode(), B1)
                    count("junk_register")
                except OSError:
                    pass
                # Rebind now and then: many source ports.
                if random.random() < 0.1:
                    i = junk_udp.index(s)
                    s.close()
                    n = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    n.bind((f"127.0.7.{200 + i}", 0))
                    n.setblocking(False)
                    junk_udp[i] = n
            if next_move <= now:
                next_move = now + 7.0
                m = random.choice(movers)
                if not m.busy:
                    m.blade = B2 if m.blade == B1 else B1
                    m.auth = m.blade == B1
                    m.reg_call = f"reg-{m.ext}-{uniq()}"
                    m.register()
                    count("moved")
            if next_tcp_junk <= now:
                next_tcp_junk = now + 0.5
                try:
                    s = socket.create_connection(random.choice([B1, B2]), timeout=1,
                                                 source_address=("127.0.7.250", 0))
                    if random.random() < 0.5:
                        s.sendall(b"INVITE sip:1@cc.example SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.7.250:5;bra")
                    s.close()
                    count("tcp_cut")
                except OSError:
                    count("tcp_cut_err")
                # A TCP agent reconnects now and then.
                tcps = [a for a in agents if a.tcp and not a.busy]
                if tcps and random.random() < 0.1:
                    a = random.choice(tcps)
                    a.close(); a.open(); a.register()
                    count("tcp_reconnect")
        # Drain junk sockets.
        for s in junk_udp:
            try:
                while True:
                    s.recv(65536)
            except (BlockingIOError, OSError):
                pass
        for key, _ in sel.select(timeout=0.01):
            key.data.readable()
    stats["placed"] = placed
    stats["elapsed"] = round(time.monotonic() - t0, 1)
    # Log out nobody: registrations lapse by themselves (Expires 60).
    print(json.dumps(dict(sorted(stats.items()))))


main()
