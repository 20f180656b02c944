"""Source revisions of the built-in methods that change no number (moved modules, import paths): their runs keep
the code version of the source before (bench.registry.code_version reads this table).

Registered name -> {digest of the revised source (bench.registry.source_digest): code version before}. An entry is
added only for a revision shown to keep every number bit-identical; tests/test_identity.py pins the code versions
and names the digest of any revised source.
"""

SAME_CODE: dict[str, dict[str, str]] = {
    # the built-ins moved into bench.methods: import lines (bench.api, relative helpers) changed, nothing else
    "cocoop": {"f03ab2adcc09": "a62b802bd6e9"},
    "coop": {"f13a3234fb19": "2f7babe01757"},
    "coop_csc": {"39f6ec4c24ba": "1fd88305a99d"},
    "ivlp": {"dee2d7f9cf1e": "7bdd0eccc660"},
    "kgcoop": {"a4c568913258": "df0e76cddc63"},
    # linear_probe 29a432d620dd: the c_search_without_val=test option removed (no option selects on test images);
    # every other configuration runs the same code
    "linear_probe": {"5df4796fa65a": "bd06866f3a96", "29a432d620dd": "bd06866f3a96"},
    "maple": {"77dc3cf9fdaf": "ac93ec87998a"},
    "promptsrc": {"963474a6e633": "35d54e4bc25e"},
    "vpt_deep": {"c64d5b2d79a9": "0fc0f77d1e1c"},
    # zeroshot 36812c30a29c: and its ImageNet template set imported from methods/_templates.py (the same 7 strings)
    "zeroshot": {"6a9b2a6b52fa": "9725a2c0cda6", "36812c30a29c": "9725a2c0cda6"},
    # clip_lora 7ea1ab1b7973: its figure colour only (IVLP had the same one)
    "clip_lora": {"7ea1ab1b7973": "32cc634622cc"},
    # the ImageNet template set moved into methods/_templates.py (the same 7 strings in the same order); LP++ and
    # CLAP match class names with _prompts.match_classes instead of a copy of it (the same rows)
    "tip_adapter": {"a7d9146af518": "593eb174bcce"},
    "tip_adapter_f": {"ce1a9ce336b0": "52633dacb3e6"},
    "taskres": {"faf4f635e28e": "4315c0a68303"},
    "lp_pp": {"49e0c07c11ee": "de78a039380c"},
    "clap": {"7a5e712b6e05": "39d1ed6ce836"},
    "zs_lp": {"70a4a6e34af3": "3da1af84360e"},
}
