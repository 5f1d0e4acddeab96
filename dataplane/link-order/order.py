"""ringmesh-proxy's link order (dataplane/link-order/symbols.txt) from two callgrind
--dump-instr=yes profiles, one of a start and a drain alone and one of a start, traffic and a
drain: first every function the proxy runs to start (so that an idle proxy's code is on as few
pages as can be), then those traffic adds, most instructions first (the request path packed),
then the io_uring driver's (callgrind cannot run the proxy on io_uring: taken by name).
Prints mangled names, one a line. Usage: order.py START_PROFILE FULL_PROFILE BINARY"""
import sys, re, collections, bisect, subprocess
start_cg, full_cg, binary = sys.argv[1], sys.argv[2], sys.argv[3]
syms = []
out = subprocess.run(['nm', '-S', '--defined-only', binary], capture_output=True, text=True).stdout
for l in out.splitlines():
    p = l.split()
    if len(p) == 4 and p[2] in 'tTwW':
        syms.append((int(p[0], 16), int(p[1], 16), p[3]))
syms.sort()
starts = [s[0] for s in syms]
def profile(cg):
    obnames, cur_ob, last, after_call = {}, None, 0, False
    ir = collections.Counter()
    name = binary.split('/')[-1]
    for line in open(cg):
        if line.startswith(('ob=', 'cob=')):
            m = re.match(r'c?ob=\((\d+)\)(?: (.*))?', line.strip())
            if m.group(2): obnames[m.group(1)] = m.group(2)
            if line.startswith('ob='): cur_ob = obnames.get(m.group(1))
            continue
        if line.startswith('calls='):
            after_call = True
            continue
        if not line or line[0] not in '0123456789+-*':
            continue
        f = line.split()
        tok = f[0]
        if tok.startswith('0x'): a = int(tok, 16)
        elif tok[0] == '+': a = last + int(tok[1:])
        elif tok[0] == '-': a = last - int(tok[1:])
        elif tok == '*': a = last
        else: a = int(tok)
        last = a
        cost = 0 if after_call else (int(f[2]) if len(f) > 2 else 1)
        after_call = False
        if cur_ob and cur_ob.endswith(name):
            i = bisect.bisect_right(starts, a) - 1
            if i >= 0 and syms[i][0] <= a < syms[i][0] + syms[i][1]:
                ir[i] += max(cost, 1)
    return ir

start, full = profile(start_cg), profile(full_cg)
by_ir = lambda ir: [syms[i][2] for i, _ in sorted(ir.items(), key=lambda kv: (-kv[1], kv[0]))]
to_start = by_ir(start)
seen = set(to_start)
extra = [s[2] for s in syms if s[2] not in seen and ('io_uring' in s[2] or 'uring' in s[2].lower() and 'monoio' in s[2])]
seen.update(extra)
traffic = [n for n in by_ir(full) if n not in seen]
order = to_start + extra + traffic
size = {s[2]: s[1] for s in syms}
kib = lambda names: sum(size[n] for n in names) // 1024
sys.stderr.write(f"{len(to_start)} functions to start ({kib(to_start)} KiB), {len(extra)} of the io_uring driver "
                 f"({kib(extra)} KiB), {len(traffic)} more with traffic ({kib(traffic)} KiB)\n")
if len(to_start) < 300 or len(traffic) < 100:
    sys.exit("too few functions: a profile is not of a whole run (did the proxy start and serve?)")
for n in order:
    print(n)
