# 生命周期：私域五类核心人群（《私域流量用标签做精细化触达》）
#
# 每位粉丝恰好落入一类，每类对应一套触达目标和频次：
#   沉默   唤醒激活、挽回流失        每月 1-2 次
#   高价值 维护粘性、引导转介绍      一对一私信
#   老客   促进复购、提升客单价      每周 2-3 次
#   意向客 解决顾虑、推动下单        咨询后 2 小时内、未下单 3 天后跟进
#   新客   建立信任、引导首次消费    每周 1-2 次
#
# 顺序是刻意的：沉默在最前。沉默的人不论价值高低都只按沉默的频次触达
# （每周推送会导致拉黑），再次活跃后沉默自动取消，粉丝回到原来的价值分层。
# 高价值在老客之前：高价值是老客中的一部分，应得到更高的待遇。
# 意向客在新客之前：有浏览/咨询行为的未购用户需要针对性跟进。
# 各条件另外写成互斥的，单独阅读每一条都成立，lint 也能证明它们不重叠。

# -- 阈值（可调） --------------------------------------------------------------
let lifecycle_silent_window = 7d  # 沉默：连续 7 天无互动……
let lifecycle_no_order_window = 30d  # ……且 30 天未消费
let lifecycle_intent_window = 7d  # 意向客：近 7 天内……
let lifecycle_intent_min = 2  # ……浏览/咨询至少 2 次
let lifecycle_intent_types = ["menu_view", "menu_click", "text", "scan"]
let lifecycle_vip_window = 365d  # 高价值：近一年……
let lifecycle_vip_orders = 3  # ……复购至少 3 单……
let lifecycle_vip_avg_amount = 300  # ……且平均客单价至少 300 元
let lifecycle_active_window = 7d  # 高活跃：7 天内……
let lifecycle_active_min = 3  # ……互动至少 3 次

# -- 派生条件 -----------------------------------------------------------------
# 互动：任何事件（取消关注除外）、最近活跃时间或关注本身。
let lifecycle_recent_interaction = exists(events where type != "unsubscribe" within lifecycle_silent_window)
    or last_active_at > now() - lifecycle_silent_window
    or subscribe_time > now() - lifecycle_silent_window

let lifecycle_silent = not lifecycle_recent_interaction
    and not exists(orders within lifecycle_no_order_window)

let lifecycle_vip = count(orders within lifecycle_vip_window) >= lifecycle_vip_orders
    and avg(orders.amount within lifecycle_vip_window) >= lifecycle_vip_avg_amount

let lifecycle_intent = count(events where type in lifecycle_intent_types within lifecycle_intent_window) >= lifecycle_intent_min

group "生命周期" exclusive {
  tag "沉默" when lifecycle_silent {
    description "连续7天无互动且30天未消费；再次活跃后自动取消"
    priority 90
  }

  tag "高价值" when not lifecycle_silent and lifecycle_vip {
    description "近一年复购≥3单且平均客单价≥300元"
    priority 90
  }

  tag "老客" when not lifecycle_silent and not lifecycle_vip and count(orders) >= 1 {
    description "下过单（首次下单后新客自动变为老客）"
    priority 90
  }

  tag "意向客" when not lifecycle_silent and count(orders) == 0 and lifecycle_intent {
    description "未下单，近7天浏览/咨询≥2次"
    priority 90
  }

  tag "新客" when not lifecycle_silent and count(orders) == 0 and not lifecycle_intent {
    description "未下单、无明显意向的新关注用户"
    priority 90
  }
}

tag "已购买" when count(orders) >= 1 {
  description "至少下过一单（支付后自动打标）"
  priority 80
}

tag "高活跃" when count(events where type != "unsubscribe" within lifecycle_active_window) >= lifecycle_active_min {
  description "7天内互动≥3次"
  priority 40
}
