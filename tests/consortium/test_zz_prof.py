import cProfile, pstats, time, io
import numpy as np

def test_prof(consortium, he_key, database_url):
    if database_url.startswith("postgresql"):
        return
    run_id = consortium.open_run()["run_id"]
    payloads = {b: [he_key.encrypt(np.random.default_rng(i).uniform(-1, 1, 2575)) for i in range(3)] for b in consortium.banks}
    print("payload bytes", len(payloads["bank-1"][0]))
    pr = cProfile.Profile()
    times = []
    for k in range(30):
        if k == 5: pr.enable()
        for j, (b, bank) in enumerate(consortium.banks.items()):
            t = time.thread_time()
            r = bank.contribute(run_id, f"gbdt/tree-{k}/level-0", payloads[b][k % 3])
            times.append(((time.thread_time() - t) * 1e3, j))
            assert r.status_code == 201, r.get_json()
    pr.disable()
    a = np.array(times[15:])
    print("cpu ms per contribution: non-completing %.2f completing %.2f" % (np.median(a[a[:, 1] < 2, 0]), np.median(a[a[:, 1] == 2, 0])))
    s = io.StringIO(); st = pstats.Stats(pr, stream=s); st.sort_stats("cumulative"); st.print_callees("rounds.py:174.contribute"); st.print_callees("api/runs.py:248.contribute"); st.print_callees("rounds.py:289._store_contribution"); st.print_callees("rounds.py:448.settle_round"); print(s.getvalue()[:20000])
