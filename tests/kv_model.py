"""tests/kv_model.py: a small reference model of the KV-cache block manager with reuse.

Written from ../shared/spec/kvcache.md (§1.3 free queues, §1.5 getFreeBlock, §1.6 addSequence with
reuse, §1.8 addToken, §1.9 storing and release, §4.3 matching) and design.md's deliberate
difference 1 (the all-or-nothing pre-check of add_sequence). It favours plain lists and dicts over
speed; tests/test_kv_cache_stateful.py compares the C++ cache with it after every operation.

Scope: one attention window, beam width 1. Every block keeps the default retention priority (the
bindings take no retention config), so the per-priority free queues collapse to one LRU list per
storage level, and a cached block is always offloadable (priority 35 >= 30).
"""

ROOT = -1                     # the reuse tree's dummy root
DEFAULT_PRIORITY = 35
OFFLOAD_MIN_PRIORITY = 30
PRIMARY, SECONDARY = 0, 1


class Rejected(Exception):
    """The model's prediction that the call is refused; `needed` is the pre-check count."""

    def __init__(self, needed, free):
        super().__init__(f"needs {needed} free blocks, {free} free")
        self.needed, self.free = needed, free


class Block:
    def __init__(self, bid, level):
        self.id = bid
        self.level = level        # storage: PRIMARY or SECONDARY
        self.refs = 0             # sequences holding it
        self.key = None           # (lora, ((token, extra), ...)); None or no items: never filled
        self.parent = None        # tree parent id (ROOT at the top); None: not in the tree
        self.stored_at = 0        # insertion order into the tree (earliest wins partial ties)

    def has_tokens(self):
        return self.key is not None and len(self.key[1]) > 0


class KVModel:
    def __init__(self, tpb, num_blocks, reuse=True, partial=True, copy=True, secondary=0):
        self.tpb = tpb
        self.reuse, self.partial, self.copy = reuse, partial, copy
        self.blocks = [Block(b, PRIMARY if b < num_blocks else SECONDARY) for b in range(num_blocks + secondary)]
        # Free lists, front = next to hand out; initially ascending ids per level.
        self.queue = {PRIMARY: list(range(num_blocks)), SECONDARY: list(range(num_blocks, num_blocks + secondary))}
        self.children = {ROOT: {}}   # parent id -> {key: child id}
        self.store_counter = 0
        self.stats = dict(alloc_total_blocks=0, alloc_new_blocks=0, reused_blocks=0, missed_blocks=0)
        self.requests = {}           # rid -> dict(items=[(token, extra)], lora, prompt_len, prepopulated)
        self.seqs = {}               # rid -> dict(blocks=[ids in allocation order], tokens=n)
        self.last_walk = []          # per position of the last add_sequence: hit/copy/takeover/miss
        self.onboards = 0            # secondary blocks brought back to primary so far

    # --------------------------------------------------------------- requests (the token source)

    def add_request(self, rid, tokens, lora=None, extra_ids=None):
        extras = list(extra_ids) if extra_ids is not None else [None] * len(tokens)
        self.requests[rid] = dict(items=list(zip(tokens, extras)), lora=lora, prompt_len=len(tokens),
                                  prepopulated=0, extras=extra_ids is not None)

    def add_new_token(self, rid, token):
        r = self.requests[rid]
        r["items"].append((token, 0 if r["extras"] else None))   # a generated token's extra id is 0

    def remove_request(self, rid):
        del self.requests[rid]

    def keys(self, rid, num_tokens, full_only):
        """Keys of the request's first num_tokens tokens, tpb per key; a short last key unless full_only."""
        r = self.requests[rid]
        items = r["items"][:max(num_tokens, 0)]
        out = []
        for start in range(0, len(items), self.tpb):
            chunk = tuple(items[start:start + self.tpb])
            if full_only and len(chunk) < self.tpb:
                break
            out.append((r["lora"], chunk))
        return out

    # --------------------------------------------------------------- free lists

    def claim(self, b):
        blk = self.blocks[b]
        if b in self.queue[blk.level]:
            self.queue[blk.level].remove(b)

    def release(self, b):
        self.queue[self.blocks[b].level].append(b)

    def get_free_block(self):
        """The LRU front of the primary list, claimed; a cached block there is offloaded first."""
        b = self.queue[PRIMARY][0]
        self.stats["alloc_total_blocks"] += 1
        if not self.blocks[b].has_tokens():
            self.stats["alloc_new_blocks"] += 1
        if self.blocks[b].has_tokens() and DEFAULT_PRIORITY >= OFFLOAD_MIN_PRIORITY and self.queue[SECONDARY]:
            # The block object keeps its key and tree place and moves to host storage; the host
            # block it swaps storage with is handed out.
            host = self.queue[SECONDARY][0]
            self.claim(host)
            self.claim(b)
            self.blocks[b].level, self.blocks[host].level = SECONDARY, PRIMARY
            self.release(b)
            b = host
        self.detach(b)
        self.claim(b)
        return b

    def onboard(self, b):
        if self.blocks[b].level == PRIMARY:
            return
        self.onboards += 1
        helper = self.get_free_block()
        self.blocks[b].level, self.blocks[helper].level = PRIMARY, SECONDARY
        self.release(helper)

    # --------------------------------------------------------------- reuse tree

    def detach(self, b):
        """Takes b and its whole subtree out of the tree (their keys stay on the blocks)."""
        blk = self.blocks[b]
        if blk.parent is None:
            return
        del self.children[blk.parent][blk.key]
        todo = [b]
        while todo:
            x = todo.pop()
            self.blocks[x].parent = None
            todo.extend(self.children.pop(x, {}).values())

    def insert(self, parent, b, key):
        self.store_counter += 1
        blk = self.blocks[b]
        blk.key, blk.parent, blk.stored_at = key, parent, self.store_counter
        self.children[parent][key] = b
        self.children[b] = {}

    def is_leaf(self, b):
        return not self.children.get(b)

    def find_match(self, parent, key):
        """(block, matched tokens, partial) for key under parent, or None (kvcache.md §4.3)."""
        if not key[1]:
            return None
        kids = self.children[parent]
        if key in kids:
            b = kids[key]
            return b, len(key[1]), len(key[1]) != self.tpb
        if not self.partial:
            return None
        best = None
        for ckey, c in kids.items():
            eligible = self.copy or (self.blocks[c].refs == 0 and self.is_leaf(c))
            n = common_prefix(key, ckey)
            if eligible and n > 0:
                rank = (n, -self.blocks[c].stored_at)   # longest, then earliest stored
                if best is None or rank > best[0]:
                    best = (rank, c, n)
        return None if best is None else (best[1], best[2], True)

    def store(self, keys, ids):
        """Inserts the blocks under the longest cached chain of equal keys (kvcache.md §1.9)."""
        parent, matching = ROOT, True
        for key, b in zip(keys, ids):
            if matching:
                if key in self.children[parent]:
                    parent = self.children[parent][key]   # identical content cached (maybe another block)
                    continue
                matching = False
            self.detach(b)
            self.insert(parent, b, key)
            parent = b

    def find_new_context_block(self, rid):
        """(tokens through the first uncached full block, lora) or None when every full block is cached."""
        if not self.reuse:
            return None
        r = self.requests[rid]
        parent = ROOT
        keys = self.keys(rid, len(r["items"]), full_only=True)
        for i, key in enumerate(keys):
            if key not in self.children[parent]:
                return [t for t, _ in r["items"][:(i + 1) * self.tpb]], r["lora"]
            parent = self.children[parent][key]
        return None

    # --------------------------------------------------------------- sequences

    def context_keys(self, rid, n):
        """At most n - 1 tokens are reusable; empty keys pad to ceil(n / tpb) (the last token alone)."""
        keys = self.keys(rid, n - 1, full_only=False)
        return keys + [(self.requests[rid]["lora"], ())] * (ceil_div(n, self.tpb) - len(keys))

    def needed_blocks(self, rid, n):
        """The pre-check: free primary blocks the reuse walk takes. A full match of a block another
        sequence holds is free of charge, until the first onboarding (design.md, difference 1)."""
        if not self.reuse:
            return ceil_div(n, self.tpb)
        needed, parent, onboarded = 0, ROOT, False
        for i, key in enumerate(self.context_keys(rid, n)):
            m = self.find_match(parent, key)
            if m is None or m[2]:   # a miss or a partial match ends the walk; every later position costs one
                return needed + ceil_div(n, self.tpb) - i
            b = self.blocks[m[0]]
            needed += 0 if (b.refs > 0 and not onboarded) else 1
            onboarded = onboarded or b.level == SECONDARY
            parent = b.id
        return needed

    def hold(self, rid, b):
        self.blocks[b].refs += 1
        self.seqs[rid]["blocks"].append(b)

    def add_sequence(self, rid, n):
        """Allocates the context blocks; returns the prepopulated length. Raises Rejected."""
        needed, free = self.needed_blocks(rid, n), len(self.queue[PRIMARY])
        if needed > free:
            raise Rejected(needed, free)
        self.seqs[rid] = dict(blocks=[], tokens=n)
        self.last_walk = []
        onboards = self.onboards
        prepopulated = self.walk(rid, n)
        # The pre-check is exact unless a block was onboarded (then an upper bound).
        taken = free - len(self.queue[PRIMARY])
        assert taken == needed or (taken < needed and self.onboards > onboards), (taken, needed)
        return prepopulated

    def walk(self, rid, n):
        """The allocation of add_sequence (kvcache.md §1.6 loadOrAllocateBlocks); the prepopulated length."""
        if not self.reuse:
            for _ in range(ceil_div(n, self.tpb)):
                self.hold(rid, self.get_free_block())
            return 0
        matched, parent, searching = 0, ROOT, True
        for key in self.context_keys(rid, n):
            m = self.find_match(parent, key) if searching else None
            if m is None:
                b = self.get_free_block()
                self.blocks[b].key = key
                self.hold(rid, b)
                self.stats["missed_blocks"] += 1
                self.last_walk.append("miss")
                searching = False
                continue
            b, count, partial = m
            matched += count
            self.stats["reused_blocks"] += 1
            if not partial:
                self.claim(b)
                self.onboard(b)
                self.hold(rid, b)
                self.last_walk.append("hit")
                parent = b
            elif self.blocks[b].refs > 0 or not self.is_leaf(b):
                copy = self.get_free_block()        # copy the matched tokens; the original stays shared
                self.blocks[copy].key = key
                self.hold(rid, copy)
                self.last_walk.append("copy")
                searching = False
            else:
                self.detach(b)                      # take over the unreferenced leaf
                self.claim(b)
                self.onboard(b)
                self.hold(rid, b)
                self.last_walk.append("takeover")
                searching = False
        r = self.requests[rid]
        r["prepopulated"] = min(matched, r["prompt_len"] - 1)
        return r["prepopulated"]

    def add_token(self, rid):
        """One more KV token; a new block when the token starts one. Raises Rejected."""
        seq = self.seqs[rid]
        if seq["tokens"] % self.tpb == 0:
            if not self.queue[PRIMARY]:
                raise Rejected(1, 0)
            self.hold(rid, self.get_free_block())
        seq["tokens"] += 1

    def store_context_blocks(self, rid):
        if self.reuse:
            r = self.requests[rid]
            self.store(self.keys(rid, len(r["items"]) - 1, full_only=True), self.seqs[rid]["blocks"])

    def remove_sequence(self, rid, store):
        seq = self.seqs.pop(rid)
        if store and self.reuse:
            r = self.requests[rid]
            self.store(self.keys(rid, len(r["items"]) - 1, full_only=False), seq["blocks"])
        for b in reversed(seq["blocks"]):   # the tail enters the LRU list first
            self.blocks[b].refs -= 1
            if self.blocks[b].refs == 0:
                self.release(b)

    # --------------------------------------------------------------- observations

    def tree_parent(self, b):
        p = self.blocks[b].parent
        return -2 if p is None else p

    def num_cached_blocks(self):
        return sum(1 for blk in self.blocks if blk.parent is not None)


def ceil_div(a, b):
    return -(-a // b)


def common_prefix(a, b):
    """Leading (token, extra) pairs two keys share; 0 when their LoRA ids differ."""
    if a[0] != b[0]:
        return 0
    n = 0
    for x, y in zip(a[1], b[1]):
        if x != y:
            break
        n += 1
    return n
