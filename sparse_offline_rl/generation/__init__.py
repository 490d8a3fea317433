"""Making the project's datasets: the behaviour SAC that trains their policies (`behavior`, `sac`), the
policies (`policies`), collecting their episodes (`collect`) and writing them as Minari datasets
(`generate`). Loading datasets, whichever made them, is `sparse_offline_rl.data`.

    python -m sparse_offline_rl.data make env=hopper quality=medium    # a dataset
    python -m sparse_offline_rl.data.behavior train env=hopper          # its behaviour policies
"""
