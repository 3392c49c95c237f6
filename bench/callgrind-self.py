import sys, re, collections
def parse(path):
    names={}; cost=collections.Counter(); fn=None; skip=False
    for line in open(path, errors='replace'):
        line=line.rstrip('\n')
        if line.startswith('fn='):
            m=re.match(r'fn=\((\d+)\)(?: (.*))?', line)
            if m:
                if m.group(2): names[m.group(1)]=m.group(2)
                fn=names.get(m.group(1), m.group(1))
            skip=False; continue
        if line.startswith('cfn=') or line.startswith('cfi=') or line.startswith('cob='):
            m=re.match(r'cfn=\((\d+)\)(?: (.*))?', line)
            if m and m.group(2): names[m.group(1)]=m.group(2)
            continue
        if line.startswith('calls='):
            skip=True; continue
        if line and (line[0].isdigit() or line[0] in '+-*'):
            parts=line.split()
            if len(parts)>=2:
                if skip: skip=False; continue
                cost[fn]+=int(parts[1])
    return collections.Counter({names.get(k,k):v for k,v in cost.items()})
c=parse(sys.argv[1]); n=float(sys.argv[2]) if len(sys.argv)>2 else 1
tot=sum(c.values())
print("instructions per request:", tot/n)
for f,v in c.most_common(int(sys.argv[3]) if len(sys.argv)>3 else 40):
    print(f"{v/n:10.0f} {100*v/tot:5.1f}% {f[:150]}")
