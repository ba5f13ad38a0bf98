# 沉睡唤醒（《服务号用户管理》）
#
# “3 个月没互动”的粉丝打上沉睡唤醒，发一条专属召回福利；提前一步，
# 30 天没互动的打上沉睡预警，用较轻的内容（“好久没见，来领个专属福利”）
# 先行唤醒。两个标签互斥：沉默 30-89 天是预警，90 天及以上是唤醒。
#
# 互动：任何事件（取消关注除外）、下单、最近活跃时间 last_active_at，
# 以及关注本身。“连续 N 天无互动”即最近 N 天内没有上述任何一项，
# 也就是 days_since(最近一次互动) >= N。

# -- 阈值（可调） --------------------------------------------------------------
let dormancy_wake_window = 90d  # 沉睡唤醒：连续 90 天无互动
let dormancy_warn_window = 30d  # 沉睡预警：连续 30 天无互动（不足 90 天）

# -- 派生条件 -----------------------------------------------------------------
let dormancy_quiet_wake = not exists(events where type != "unsubscribe" within dormancy_wake_window)
    and not exists(orders within dormancy_wake_window)
    and not (last_active_at > now() - dormancy_wake_window)
    and not (subscribe_time > now() - dormancy_wake_window)

let dormancy_quiet_warn = not exists(events where type != "unsubscribe" within dormancy_warn_window)
    and not exists(orders within dormancy_warn_window)
    and not (last_active_at > now() - dormancy_warn_window)
    and not (subscribe_time > now() - dormancy_warn_window)

# 一条互动记录都没有的粉丝（例如只导入了 openid）无从判断，不打沉睡标签。
let dormancy_known = last_active_at is not missing
    or subscribe_time is not missing
    or exists(events)
    or exists(orders)

group "沉睡" exclusive {
  tag "沉睡唤醒" when dormancy_known and dormancy_quiet_wake {
    description "连续90天无互动：发专属召回福利"
    priority 70
  }

  tag "沉睡预警" when dormancy_quiet_warn and not dormancy_quiet_wake {
    description "连续30-89天无互动：提前轻度唤醒"
    priority 70
  }
}
