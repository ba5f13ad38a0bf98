# 促销敏感度（《企业微信如何做用户标签》）
#
# 在促销期内购买的频次、金额越高，促销敏感度越高。敏感的人在新品、
# 促销时多触达；不敏感的人不要过度营销（《微信标签群发》：价格敏感型
# 以外的人群搭配内容型服务）。订单数太少时不下结论，两个标签都不打。
#
# 促销订单：orders.promo 为 true 的订单。占比按近一年计算：
#   订单占比 = 促销订单数 / 订单数，金额占比 = 促销订单金额 / 订单金额。

# -- 阈值（可调） --------------------------------------------------------------
let promo_window = 365d  # 统计近一年的订单
let promo_min_orders = 3  # 至少 3 单才判断
let promo_high_share = 0.6  # 订单占比和金额占比都 ≥ 60%：促销敏感
let promo_low_share = 0.2  # 订单占比和金额占比都 ≤ 20%：促销不敏感

# -- 派生条件 -----------------------------------------------------------------
let promo_orders = count(orders within promo_window)
let promo_order_share = count(orders where promo within promo_window) / promo_orders
let promo_amount_share = sum(orders.amount where promo within promo_window) / sum(orders.amount within promo_window)

group "促销敏感度" exclusive {
  tag "促销敏感" when promo_orders >= promo_min_orders
      and promo_order_share >= promo_high_share
      and promo_amount_share >= promo_high_share {
    description "近一年≥3单，促销订单与金额占比都≥60%"
    priority 50
  }

  tag "促销不敏感" when promo_orders >= promo_min_orders
      and promo_order_share <= promo_low_share
      and promo_amount_share <= promo_low_share {
    description "近一年≥3单，促销订单与金额占比都≤20%"
    priority 50
  }
}
